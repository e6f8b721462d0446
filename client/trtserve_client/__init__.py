"""Python client for the trtserve Triton ensembles (``sentiment`` classification, ``embed``,
``qa`` question answering, ``ner`` token classification).

    from trtserve_client import TrtServeClient, ServerUnavailableError

    with TrtServeClient("127.0.0.1:8001", protocol="grpc") as client:
        client.wait_ready("sentiment")
        print(client.classify(["a gripping, beautifully acted film"]))

Errors are typed (see :mod:`trtserve_client.errors`); the ``trtserve`` command is
:func:`trtserve_client.cli.main`.
"""
from .client import DEFAULT_CLASSIFY_MODEL, DEFAULT_EMBED_MODEL, DEFAULT_NER_MODEL, DEFAULT_QA_MODEL, TrtServeClient
from .errors import (
    BadInputError,
    InferenceError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerOverloadedError,
    ServerUnavailableError,
    TrtServeError,
    translate_error,
)
from .inputs import encode_texts, split_batches
from .results import DEFAULT_LABELS, Answer, Classification, Entity
from .retry import RetryPolicy, call_with_retry, is_retryable

__all__ = [
    "TrtServeClient",
    "RetryPolicy",
    "is_retryable",
    "call_with_retry",
    "Classification",
    "Answer",
    "Entity",
    "DEFAULT_LABELS",
    "DEFAULT_CLASSIFY_MODEL",
    "DEFAULT_EMBED_MODEL",
    "DEFAULT_QA_MODEL",
    "DEFAULT_NER_MODEL",
    "TrtServeError",
    "ServerUnavailableError",
    "ModelNotReadyError",
    "ModelNotFoundError",
    "BadInputError",
    "RequestTimeoutError",
    "ServerOverloadedError",
    "InferenceError",
    "translate_error",
    "encode_texts",
    "split_batches",
]
