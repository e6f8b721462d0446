"""The ensemble contract: tensor names and labels shared by the build, the server's Python
models, the client, the load tests and the benchmarks.

Clients depend on these; keep them stable. Every other module spells a tensor name through
these constants, never as a fresh literal. This package imports nothing, so the client can use
it without the server's backend code, and each generated model repository carries a copy.
"""
from __future__ import annotations

# Ensemble (public) tensors.
TEXT = "TEXT"
LABEL = "LABEL"
SCORE = "SCORE"
PROBABILITIES = "PROBABILITIES"
EMBEDDING = "EMBEDDING"

# Tokenizer -> encoder tensors (also the ONNX graph's input names).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)

# Encoder -> postprocess tensors (the ONNX graph's output names), per task.
LOGITS = "logits"
POOLED = "pooled"  # mean-pooled hidden state, not yet normalised

# Task names.
CLASSIFICATION = "classification"
EMBEDDING_TASK = "embedding"

# Labels of the shipped sentiment deployment, by class id (deployments/sentiment.toml, the
# training dataset's label ids, and the client's default).
SENTIMENT_LABELS = ("negative", "positive")
