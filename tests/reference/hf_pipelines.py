"""Run Hugging Face pipelines for the exactness tests; runs in the reference venv (.venv-ref).

    .venv-ref/bin/python tests/reference/hf_pipelines.py < request.json > results.json

The request is a list of cases, each naming the task ("question-answering" |
"token-classification"), a local checkpoint folder, the pipeline settings and the inputs; the
answer holds, per case, one JSON value per input, exactly what the pipeline returned (numpy
scalars as numbers). One process serves all cases (torch and transformers import once).
Nothing is downloaded.
This file imports only the reference environment's packages, never the project's.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value


def question_answering(checkpoint: str, settings: dict, items: list) -> list:
    from transformers import pipeline

    qa = pipeline("question-answering", model=checkpoint, tokenizer=checkpoint, device=-1)
    out = []
    for item in items:
        result = qa(question=item["question"], context=item["context"], **settings)
        out.append(_plain(result if isinstance(result, list) else [result]))
    return out


#: (checkpoint, max_length, stride, text) -> the pipeline's model outputs for the text's windows, so
#: that aggregation strategies sharing the windows share the forward passes.
_NER_FORWARDS: dict = {}


def token_classification(checkpoint: str, settings: dict, items: list) -> list:
    """``pipeline("token-classification", ...)(text)`` per text.

    Each call is the pipeline's own ``run_single`` (preprocess -> forward per window ->
    postprocess), with the forward outputs of a (text, windows) reused across the strategies.
    """
    from transformers import AutoTokenizer, pipeline

    settings = dict(settings)
    max_length = settings.pop("max_length")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, model_max_length=max_length)
    if not settings.get("stride"):
        settings.pop("stride", None)
    ner = pipeline("token-classification", model=checkpoint, tokenizer=tokenizer, device=-1, **settings)
    out = []
    for text in items:
        key = (checkpoint, max_length, settings.get("stride"), text)
        if key not in _NER_FORWARDS:
            _NER_FORWARDS[key] = [ner.forward(model_inputs, **ner._forward_params)
                                  for model_inputs in ner.preprocess(text, **ner._preprocess_params)]
        out.append(_plain(ner.postprocess(_NER_FORWARDS[key], **ner._postprocess_params)))
    return out


TASKS = {"question-answering": question_answering, "token-classification": token_classification}


def main() -> int:
    import torch

    # One thread: on a busy 2-core machine two torch threads made each call 10x slower.
    torch.set_num_threads(int(os.environ.get("TRTSERVE_REF_THREADS", "1")))
    request = json.load(sys.stdin)
    results = [TASKS[case["task"]](case["checkpoint"], case.get("settings", {}), case["items"])
               for case in request["cases"]]
    import transformers

    json.dump({"transformers": transformers.__version__, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
