"""Exploration: each architecture x task through every stage, what works and why not -> JSON.

For every (architecture, task) on its tiny seeded checkpoint:

1. ``pipeline_export``: today's spec-driven export (trtserve_build.export) as it is;
2. ``export``: an architecture-aware export with exactly the encoder inputs the architecture
   takes (torch.onnx.export, dynamo=False, opset 17, module in eval mode);
3. ``parity``: ONNX Runtime vs PyTorch on real text tokenized by the served tokenizer
   (BucketTokenizer on the saved tokenizer.json), at the export tolerance;
4. ``batch_invariance``: each text alone vs inside a padded batch of all texts (ONNX Runtime);
5. ``fp16``/``hybrid``/``int8``: the precision transforms, run by the FP16-faithful ONNX
   interpreter on real and stress text, cosine vs the FP32 reference, NaN/Inf count;
6. ``plan_<precision>``: a TensorRT-RTX plan build of each graph (parse, profile, serialize).

Every stage records ``ok`` and, when it failed, the error. Writes one JSON file.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import platform
import time
import traceback
from pathlib import Path

import numpy as np

from . import architectures as A
from .checkpoints import LABELS, checkpoint_folder, default_cache

log = logging.getLogger(__name__)
TASKS = ("classification", "embedding")
PRECISIONS = ("fp16", "hybrid", "int8")
MAX_LEN = 64
BUCKETS = (16, 32, 64)


def make_spec(arch: A.Architecture, task: str, checkpoint: Path, name: str):
    from trtserve_build.spec import parse_spec

    data = {
        "name": name, "task": task,
        "model": {"checkpoint": str(checkpoint), "max_sequence_length": MAX_LEN,
                  "length_buckets": list(BUCKETS), **({"labels": list(LABELS)} if task == "classification" else {})},
        "batching": {"max_batch_size": 64, "optimal_batch_size": 16},
        "engine": {"cpu": {"backend": "onnxruntime"}, "gpu": {"backend": "tensorrt"}},
        "precision": {"calibration_samples": 64},
    }
    return parse_spec(data)


class Encoder:
    """forward(*arch.inputs) -> logits (classification) or mean-pooled hidden state (embedding)."""

    @staticmethod
    def build(arch: A.Architecture, task: str, checkpoint: Path):
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification

        names = arch.inputs
        if task == "classification":
            inner = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
        else:
            kwargs = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(
                _model_class(checkpoint).__init__).parameters else {}
            inner = AutoModel.from_pretrained(checkpoint, attn_implementation="eager", **kwargs)

        class Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, *tensors):
                feeds = dict(zip(names, tensors))
                out = self.inner(**feeds)
                if task == "classification":
                    return out.logits
                hidden = out.last_hidden_state
                mask = feeds[A.ATTENTION_MASK].unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

        return Module().eval(), inner


def _model_class(checkpoint: Path):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(checkpoint)
    return AutoModel._model_mapping[type(config)]


def forward_inputs(checkpoint: Path) -> dict:
    """What the bare encoder's forward accepts and its config says about token types."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    params = inspect.signature(_model_class(checkpoint).forward).parameters
    return {
        "forward_takes": [n for n in (A.INPUT_IDS, A.ATTENTION_MASK, A.TOKEN_TYPE_IDS, "position_ids") if n in params],
        "type_vocab_size": getattr(config, "type_vocab_size", None),
        "pad_token_id": config.pad_token_id,
    }


def _stage(record: dict, name: str, fn):
    started = time.perf_counter()
    try:
        value = fn() or {}
        record[name] = {"ok": True, **value}
    except Exception as e:  # noqa: BLE001 - the exploration records every failure
        record[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:600]}",
                        "where": traceback.format_exc().strip().splitlines()[-3][:300]}
    record[name]["seconds"] = round(time.perf_counter() - started, 2)
    log.info("  %-18s %s %s", name, "ok  " if record[name]["ok"] else "FAIL", record[name].get("error", ""))
    return record[name]["ok"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def explore_one(arch: A.Architecture, task: str, work: Path, texts: list[str], stress: list[str]) -> dict:
    import onnx
    import onnxruntime as ort
    import torch
    from trtserve_backend.tokenize import BucketTokenizer

    checkpoint = checkpoint_folder(arch.name)
    name = f"arch_{arch.name.replace('-', '_')}_{task}"
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    rec: dict = {"architecture": arch.name, "task": task, "checkpoint": str(checkpoint), "inputs": list(arch.inputs),
                 "model": forward_inputs(checkpoint)}
    spec = make_spec(arch, task, checkpoint, name)

    def pipeline_export():
        from trtserve_build.export import export

        m = export(make_spec(arch, task, checkpoint, name + "_pipeline"), force=True)
        return {"inputs": list(m.inputs), "max_abs_diff": m.max_abs_diff, "min_cosine": m.min_cosine}

    _stage(rec, "pipeline_export", pipeline_export)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    served = BucketTokenizer.from_file(str(out / "tokenizer.json"), MAX_LEN, BUCKETS, int(tokenizer.pad_token_id),
                                       arch.inputs)
    module, _ = Encoder.build(arch, task, checkpoint)
    onnx_path = out / "model.onnx"

    def export_stage():
        sample = served.encode(texts[:2])
        with torch.no_grad():
            torch.onnx.export(module, tuple(torch.from_numpy(sample[n]) for n in arch.inputs), str(onnx_path),
                              input_names=list(arch.inputs), output_names=["output"],
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in arch.inputs}, "output": {0: "batch"}},
                              opset_version=17, do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(onnx_path), full_check=True)
        graph = onnx.load(str(onnx_path))
        return {"graph_inputs": [i.name for i in graph.graph.input],
                "op_types": sorted({n.op_type for n in graph.graph.node}), "nodes": len(graph.graph.node)}

    if not _stage(rec, "export", export_stage):
        return rec
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run_ort(feeds):
        return session.run(None, {n: feeds[n] for n in arch.inputs})[0]

    def run_torch(feeds):
        with torch.no_grad():
            return module(*(torch.from_numpy(feeds[n]) for n in arch.inputs)).numpy()

    reference = {}

    def parity():
        diffs, coss = [], []
        for k in range(0, len(texts), 16):
            feeds = served.encode(texts[k:k + 16])
            ref, got = run_torch(feeds), run_ort(feeds)
            reference.update({k + i: ref[i] for i in range(len(ref))})
            diffs.append(float(np.abs(ref - got).max()))
            coss.append(float(cosine_rows(ref, got).min()))
        diff, cos = max(diffs), min(coss)
        if diff > 1e-4 or cos < 0.99999:
            raise AssertionError(f"ONNX Runtime vs PyTorch: max |diff| {diff:.3g} (allowed 1e-4), min cosine {cos:.7f}")
        return {"max_abs_diff": diff, "min_cosine": cos, "texts": len(texts)}

    _stage(rec, "parity", parity)

    def batch_invariance():
        together = run_ort(served.encode(texts[:32]))
        alone = np.stack([run_ort(served.encode([t]))[0] for t in texts[:32]])
        diff = float(np.abs(together - alone).max())
        if diff > 1e-4:
            raise AssertionError(f"a text's output changes with its batch: max |diff| {diff:.3g}")
        return {"max_abs_diff": diff, "texts": 32}

    _stage(rec, "batch_invariance", batch_invariance)
    _precisions(rec, spec, onnx_path, served, texts, stress, run_ort, out)
    return rec


def _precisions(rec, spec, onnx_path, served, texts, stress, run_ort, out: Path) -> None:
    import onnx
    from trtserve_build import calibration, precision as P
    from trtserve_build.engine_trt import build_plan
    from trtserve_build.onnx_interpreter import TorchInterpreter

    fp32 = onnx.load(str(onnx_path))
    sets = {"real": texts, "stress": stress}
    ref = {k: _outputs(run_ort, served, v) for k, v in sets.items()}
    graphs = {"fp32": onnx_path}
    for precision in PRECISIONS:
        def transform(precision=precision):
            amax = None
            if precision == "int8":
                amax = calibration.calibrate(P._named_copy(fp32), texts[:64], served.encode).amax
            model, report = P.transform(fp32, precision, activation_amax=amax)
            path = out / f"{precision}.onnx"
            onnx.save(model, str(path))
            graphs[precision] = path
            interp = TorchInterpreter(model, device="cpu")
            result = {"fp32_nodes": report.fp32_nodes, "fp16_nodes": report.fp16_nodes}
            for k, v in sets.items():
                got = _outputs(lambda f: interp.run(f)[0], served, v)
                finite = np.isfinite(got).all(axis=1)
                cos = cosine_rows(ref[k][finite], got[finite]) if finite.any() else np.array([np.nan])
                result[k] = {"nonfinite": int((~finite).sum()), "cosine_min": float(np.nanmin(cos)),
                             "cosine_mean": float(np.nanmean(cos)), "max_abs_error": float(np.abs(ref[k][finite] - got[finite]).max())}
            return result

        _stage(rec, precision, transform)
    for precision, path in graphs.items():
        def plan(precision=precision, path=path):
            r = build_plan(path, out / f"{precision}.plan", spec, precision)
            return {"tensorrt": f"{r.tensorrt_flavour} {r.tensorrt_version}", "plan_bytes": r.plan_bytes,
                    "build_seconds": r.build_seconds}

        _stage(rec, f"plan_{precision}", plan)


def _outputs(run, served, texts, batch: int = 16) -> np.ndarray:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result = [None] * len(texts)
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        values = np.asarray(run(served.encode([texts[i] for i in idx])), dtype=np.float32)
        for i, v in zip(idx, values):
            result[i] = v
    return np.stack(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="*", default=list(A.ARCHITECTURES))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--output", type=Path, default=Path("results/architectures_explore.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from trtserve_build.data import corpus_texts
    from trtserve_build.export import validation_texts
    from trtserve_build.fidelity import stress_texts

    texts = validation_texts(limit=args.texts)
    stress = stress_texts(corpus_texts(limit=400))
    work = default_cache() / "explore"
    records = []
    for name in args.architectures:
        arch = A.get_architecture(name)
        for task in args.tasks:
            log.info("%s / %s", name, task)
            records.append(explore_one(arch, task, work, texts, stress))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                       "results": records}, indent=2) + "\n")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
