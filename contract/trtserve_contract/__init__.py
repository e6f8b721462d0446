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
QUESTION = "QUESTION"
CONTEXT = "CONTEXT"
ANSWER = "ANSWER"
START = "START"
END = "END"
ENTITIES = "ENTITIES"

# Tokenizer -> encoder tensors (also the ONNX graph's input names).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)

# Tokenizer -> postprocess tensors of the windowed tasks (question answering, token
# classification): one row per window, so a request of n items arrives as k >= n rows.
#: [k, length, 2] int32: the character span (into the item's text) each token stands for;
#: (-1, -1) where the token can be no part of an answer or entity (special tokens, padding,
#: the question), (-2, -2) on padding.
TOKEN_SPANS = "token_spans"
#: [k, 1] int32: which item of the request the window belongs to (0 .. n-1, ascending).
WINDOW_ITEM = "window_item"
#: [k, 1] BYTES: the item's text (the context for QA) on its first window row, empty on the others.
ITEM_TEXT = "item_text"

# Encoder -> postprocess tensors (the ONNX graph's output names), per task.
LOGITS = "logits"  # [n, labels]; per token for the windowed tasks: [k, length, 2 (start, end) | labels]
POOLED = "pooled"  # mean-pooled hidden state, not yet normalised

# Task names.
CLASSIFICATION = "classification"
EMBEDDING_TASK = "embedding"
QUESTION_ANSWERING = "question_answering"
TOKEN_CLASSIFICATION = "token_classification"
#: Tasks whose tokenizer splits an item into windows (rows) with the tensors above.
WINDOWED_TASKS = (QUESTION_ANSWERING, TOKEN_CLASSIFICATION)

# Labels of the shipped sentiment deployment, by class id (deployments/sentiment.toml, the
# training dataset's label ids, and the client's default).
SENTIMENT_LABELS = ("negative", "positive")
