"""The fidelity report of the windowed tasks (question answering, token classification): each
precision's graph against FP32 through the served path.

The items (:func:`trtserve_build.data.texts.windowed_eval_items`: the exactness tests' QA pairs,
a quarter of them several windows long, and NER texts) are tokenized by the served windowed
tokenizer and scored by the served postprocess (``trtserve_backend.steps.make_tokenizer`` /
``make_step_postprocess``, with the parameters the generated configs carry), requests of
:data:`REQUEST_ITEMS` items, every window one engine row, as Triton runs them. Only the executor
differs between FP32 and the variant.

QA answers are also ranked with a wider pool of spans per window (the pipeline's ``top_k =``
:data:`TIE_POOL_TOP_K`): the served scoring keeps the best ``2 * n_best + 10`` spans of each
window and adds the scores of spans with the same text, so a near-tie at that cut (12th against
13th span) can move a whole answer; where the two precisions' answers differ but their
wide-pool answers agree, the difference is that cut, not the precision (``pool_ties``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import trtserve_contract as contract
from trtserve_backend.qa import ranked_answers
from trtserve_backend.steps import make_step_postprocess, make_tokenizer
from trtserve_backend.windows import window_lengths

from ..core.paths import export_dir
from ..core.records import ExportManifest
from ..core.spec import DeploymentSpec
from ..stages.fidelity import Row, answer_agreement, compare_token_logits, entity_agreement
from ..stages.triton_config import postprocess_parameters, tokenizer_parameters

#: Items per request: the rows of all their windows are one executor batch.
REQUEST_ITEMS = 8
#: QA: the answers of a wider span pool (see above) decide whether differing answers are a cut tie.
TIE_POOL_TOP_K = 5


@dataclass
class WindowedOutputs:
    """One executor's results on the items: per-window token logits and the served outputs."""

    logits: list[np.ndarray]  # per window: [tokens, 2 | labels], its real tokens only
    answers: list[tuple[int, int, float]] | None  # QA: (START, END, SCORE) per item
    entities: list[list[dict]] | None  # NER: the ENTITIES list per item
    seconds: float
    pooled: list[tuple[int, int]] | None = None  # QA: (START, END) per item with the wider span pool


class WindowedRunner:
    """The served tokenizer and postprocess of ``spec`` around an executor."""

    def __init__(self, spec: DeploymentSpec):
        folder = str(export_dir(spec))
        manifest = ExportManifest.read(export_dir(spec))
        self.task = spec.task
        self.inputs = list(manifest.inputs)
        self.output = manifest.output
        self.tokenizer = make_tokenizer(tokenizer_parameters(spec, manifest), folder, self.inputs)
        self.postprocess = make_step_postprocess(postprocess_parameters(spec), folder)
        if self.task == contract.QUESTION_ANSWERING:
            served = self.postprocess.settings
            self.wide_pool = dataclasses.replace(served, n_best=max(served.n_best, TIE_POOL_TOP_K))

    def requests(self, items: Sequence) -> list[dict[str, np.ndarray]]:
        """The tokenizer's rows of each request of :data:`REQUEST_ITEMS` items (errors raised)."""
        chunks = [list(items[i:i + REQUEST_ITEMS]) for i in range(0, len(items), REQUEST_ITEMS)]
        out = []
        for rows in self.tokenizer.encode_requests(chunks):
            if isinstance(rows, Exception):
                raise rows
            out.append(rows)
        return out

    def run(self, executor, requests: Sequence[dict[str, np.ndarray]]) -> WindowedOutputs:
        started = time.perf_counter()
        logits, answers, entities, pooled = [], [], [], []
        for rows in requests:
            raw = np.asarray(executor.infer({n: rows[n] for n in self.inputs})[0], dtype=np.float32)
            logits += [raw[k, :n] for k, n in enumerate(window_lengths(rows[contract.TOKEN_SPANS]))]
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                served = self.postprocess({**rows, self.output: raw})
            if self.task == contract.QUESTION_ANSWERING:
                answers += [(int(s), int(e), float(p)) for s, e, p in zip(
                    served[contract.START].ravel(), served[contract.END].ravel(), served[contract.SCORE].ravel())]
                pooled += self._pooled(rows, raw)
            else:
                entities += [json.loads(v) for v in served[contract.ENTITIES].ravel()]
        qa = self.task == contract.QUESTION_ANSWERING
        return WindowedOutputs(logits, answers if qa else None, None if qa else entities,
                               round(time.perf_counter() - started, 2), pooled if qa else None)

    def _pooled(self, rows: dict[str, np.ndarray], raw: np.ndarray) -> list[tuple[int, int]]:
        ranked = ranked_answers(raw, rows[contract.TOKEN_SPANS], rows[contract.WINDOW_ITEM],
                                rows[contract.ITEM_TEXT], self.wide_pool)
        return [(r[0].start, r[0].end) if r else (-1, -1) for r in ranked]


def windowed_row(spec: DeploymentSpec, precision: str, executor_label: str, items: int,
                 reference: WindowedOutputs, candidate: WindowedOutputs) -> Row:
    """The report row of ``candidate`` against the FP32 ``reference`` (set ``real``)."""
    m = compare_token_logits(reference.logits, candidate.logits)
    if reference.answers is not None:
        task = answer_agreement(reference.answers, candidate.answers, reference.pooled, candidate.pooled)
    else:
        task = entity_agreement(reference.entities, candidate.entities)
    return Row(spec.name, precision, "real", executor_label, items, top1_agreement=None,
               windows=len(candidate.logits), seconds=candidate.seconds, **m, **task)
