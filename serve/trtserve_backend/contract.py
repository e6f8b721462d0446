"""The ensemble contract: tensor names shared by the build, the Python backends and clients.

Clients, load tests and our own checks depend on these; keep them stable. Every other
module spells a tensor name through these constants, never as a fresh literal.
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
