"""Decoder fidelity stage: the GPT-2 rows of the paper's method -- every precision's next-token
logits against the FP32 graph, on real text and on random token ids side by side (does random
input underestimate FP16 trouble?). The runs: :mod:`trtserve_build.pipeline.generate`.

Per row, over every position of every window: cosine of the logits (mean, min; core/metrics.py's
``cosine_rows``), the share of rows holding NaN/inf, top-1 agreement (finite rows), and on real
text the perplexity of the next token under each graph and its change against FP32.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from ..core.files import write_text_atomic
from ..core.host import machine_info
from ..core.metrics import cosine_rows


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """exp(mean next-token NLL) of ``ids`` [B, S] under ``logits`` [B, S, V] (positions 0..S-2)."""
    x = logits[:, :-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1)
    return float(np.exp(np.nanmean(nll)))


def compare(reference: np.ndarray, got: np.ndarray, ids: np.ndarray | None) -> dict:
    """Next-token logits [B, S, V] against the FP32 reference; perplexity when ``ids`` is real text."""
    ref = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    out = got.reshape(-1, got.shape[-1]).astype(np.float64)
    finite = np.isfinite(out).all(axis=1)
    cos = cosine_rows(ref[finite], out[finite])
    row = {"rows": int(ref.shape[0]), "nonfinite_share": round(float(1 - finite.mean()), 6),
           "cosine_mean": round(float(cos.mean()), 6) if finite.any() else None,
           "cosine_min": round(float(cos.min()), 6) if finite.any() else None,
           "top1_agreement": round(float((ref.argmax(1) == out.argmax(1))[finite].mean()), 4) if finite.any() else 0.0}
    if ids is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            row["perplexity_ref"] = round(perplexity(reference, ids), 3)
            row["perplexity"] = round(perplexity(got, ids), 3)
        row["perplexity_change_pct"] = round(100 * (row["perplexity"] / row["perplexity_ref"] - 1), 3)
    return row


def markdown(result: dict) -> str:
    lines = [f"GPT-2 fidelity: {result['windows']} windows x {result['length']} tokens, next-token logits at every "
             f"position; reference {result['reference']}; variants {result['variants']}; {result['machine']}.", "",
             "| precision | inputs | cosine mean | cosine min | NaN/inf share | top-1 agreement | perplexity change | executor |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        ppl = f"{r['perplexity_change_pct']:+.3f}% ({r['perplexity_ref']} -> {r['perplexity']})" if "perplexity" in r else "-"
        lines.append(f"| {r['precision']} | {r['inputs']} | {r['cosine_mean']} | {r['cosine_min']} | "
                     f"{r['nonfinite_share']} | {r['top1_agreement']} | {ppl} | {r.get('executor', '')} |")
    notes = result.get("notes") or []
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> tuple[Path, Path]:
    """``<out>.json`` and ``<out>.md``; returns both paths."""
    result = {**result, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "host": machine_info()}
    json_path, md_path = Path(out).with_suffix(".json"), Path(out).with_suffix(".md")
    write_text_atomic(json_path, json.dumps(result, indent=2) + "\n")
    write_text_atomic(md_path, markdown(result))
    return json_path, md_path
