"""GPT-2 fidelity rows (the paper's method): fp16 and hybrid against fp32, real text vs random ids.

The FP32 export (with past key/values; prompt steps, P = 0) goes through the project's precision
stage (``trtserve_build.graph.transform``: fp16, or hybrid = FP16 MatMuls with LayerNorm,
Softmax and reductions in FP32) and runs in the FP16-faithful interpreter (every FP16 result
rounded per op; ONNX Runtime's CPU provider would compute FP16 in FP32 and hide overflow). The
reference is the FP32 graph under ONNX Runtime. For every position, the next-token logits are
compared: cosine (mean, min), the share of rows with NaN/inf, top-1 agreement, and the change of
perplexity on the real text. Inputs side by side: windows of held-out review text, and windows
of uniformly random token ids of the same shape (does random input underestimate FP16 trouble?).

    python -m trtserve_gpt2.fidelity [--onnx PATH] [--windows 64] [--length 64] [--out docs/results/gpt2_fidelity]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import trtserve_contract as contract
from trtserve_build.core.paths import cache_dir

from .checkpoints import gpt2_tokenizer

PRECISIONS = ("fp16", "hybrid")


def interpreter(model):
    from trtserve_build.runtime.interpreter import TorchInterpreter

    return TorchInterpreter(model, device="cpu")


def feeds(ids: np.ndarray, layers: int, heads: int, head_dim: int) -> dict[str, np.ndarray]:
    batch, length = ids.shape
    out = {contract.INPUT_IDS: ids.astype(np.int64), contract.ATTENTION_MASK: np.ones((batch, length), np.int64),
           contract.POSITION_IDS: np.tile(np.arange(length, dtype=np.int64), (batch, 1))}
    for i in range(layers):
        out[contract.past_key_name(i)] = np.zeros((batch, heads, 0, head_dim), np.float32)
        out[contract.past_value_name(i)] = np.zeros((batch, heads, 0, head_dim), np.float32)
    return out


def compare(reference: np.ndarray, got: np.ndarray, ids: np.ndarray | None) -> dict:
    """Next-token logits [B, S, V] against the FP32 reference; perplexity when ``ids`` is real text."""
    ref = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    out = got.reshape(-1, got.shape[-1]).astype(np.float64)
    finite = np.isfinite(out).all(axis=1)
    num = (ref * np.where(np.isfinite(out), out, 0)).sum(axis=1)
    cos = num / (np.linalg.norm(ref, axis=1) * np.linalg.norm(np.where(np.isfinite(out), out, 0), axis=1) + 1e-30)
    cos = np.where(finite, cos, np.nan)
    row = {"rows": int(ref.shape[0]), "nonfinite_share": round(float(1 - finite.mean()), 6),
           "cosine_mean": round(float(np.nanmean(cos)), 6) if finite.any() else None,
           "cosine_min": round(float(np.nanmin(cos)), 6) if finite.any() else None,
           "top1_agreement": round(float((ref.argmax(1) == out.argmax(1))[finite].mean()), 4) if finite.any() else 0.0}
    if ids is not None:
        row["perplexity_ref"] = round(_perplexity(reference, ids), 3)
        row["perplexity"] = round(_perplexity(got, ids), 3)
        row["perplexity_change_pct"] = round(100 * (row["perplexity"] / row["perplexity_ref"] - 1), 3)
    return row


def _perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    x = logits[:, :-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1)
    return float(np.exp(np.nanmean(nll)))


def real_windows(tokenizer_dir: Path, windows: int, length: int) -> np.ndarray:
    from transformers import AutoTokenizer

    from trtserve_build.data.datasets import load_vader_movie_reviews, split_holdout

    from .train import SETTINGS

    texts = [r.text for r in load_vader_movie_reviews()]
    _, held = split_holdout(texts, SETTINGS["holdout"], SETTINGS["seed"])  # text the default model never saw
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    stream: list[int] = []
    for ids in tok(held)["input_ids"]:
        stream += ids + [tok.eos_token_id]
    need = windows * length
    if len(stream) < need:
        raise ValueError(f"{len(stream)} held-out tokens, {need} needed")
    return np.asarray(stream[:need], np.int64).reshape(windows, length)


def run(onnx_path: Path, tokenizer_dir: Path, windows: int, length: int, seed: int = 0) -> dict:
    import onnx

    from trtserve_backend.generation.ort_executor import OrtDecoderGraph
    from trtserve_build.core.host import cpu_model
    from trtserve_build.graph.transform import transform

    graph = OrtDecoderGraph(str(onnx_path))
    shape = (graph.num_layers, graph.num_heads, graph.head_dim)
    inputs = {"real text (held-out reviews)": real_windows(tokenizer_dir, windows, length),
              "random token ids": np.random.default_rng(seed).integers(0, 50257, (windows, length))}
    model = onnx.load(str(onnx_path))
    variants = {p: interpreter(transform(model, p)[0]) for p in PRECISIONS}
    rows = []
    for input_name, ids in inputs.items():
        f = feeds(ids, *shape)
        reference = np.concatenate([graph.session.run([contract.LOGITS], {k: v[i:i + 8] for k, v in f.items()})[0]
                                    for i in range(0, windows, 8)])
        for precision, it in variants.items():
            out = np.concatenate([it.infer({k: v[i:i + 8] for k, v in f.items()})[0] for i in range(0, windows, 8)])
            row = compare(reference, out, ids if input_name.startswith("real") else None)
            rows.append({"precision": precision, "inputs": input_name, **row})
            print(json.dumps(rows[-1]), flush=True)
    return {"onnx": str(onnx_path), "windows": windows, "length": length, "machine": cpu_model(),
            "reference": "FP32 graph, ONNX Runtime", "variants": "precision stage graph, FP16-faithful torch interpreter",
            "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"GPT-2 fidelity: {result['windows']} windows x {result['length']} tokens, next-token logits at every "
             f"position; reference {result['reference']}; variants {result['variants']}; {result['machine']}.", "",
             "| precision | inputs | cosine mean | cosine min | NaN/inf share | top-1 agreement | perplexity change |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        ppl = f"{r['perplexity_change_pct']:+.3f}% ({r['perplexity_ref']} -> {r['perplexity']})" if "perplexity" in r else "-"
        lines.append(f"| {r['precision']} | {r['inputs']} | {r['cosine_mean']} | {r['cosine_min']} | "
                     f"{r['nonfinite_share']} | {r['top1_agreement']} | {ppl} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="trtserve_gpt2.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, default=cache_dir() / "engines" / "generate" / "model.onnx")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("docs/results/gpt2_fidelity"))
    args = p.parse_args(argv)
    result = run(args.onnx, gpt2_tokenizer(), args.windows, args.length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
