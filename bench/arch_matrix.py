"""The architecture matrix: every architecture x task through every stage, served, vs PyTorch.

``run_matrix`` builds, for each (architecture, task), a spec naming the tiny seeded checkpoint
folder, runs the pipeline's stages (export checked against PyTorch, fp16/hybrid/int8 graphs
with their fidelity gate, TensorRT-RTX plans), generates ONE cpu repository holding every
deployment (each one Python model, the cpu default; the same deployments are also generated as
ensembles, whose configs are checked), starts the real embedded Triton server once, and
measures on real text:

- served parity: the served outputs against PyTorch (Hugging Face model + tokenizer), at the
  export tolerance;
- batch invariance: each text served alone, inside a batch with a long text, and inside
  concurrent requests, gives the same result.

``make arch-matrix`` writes the results (JSON + markdown table); the functional test asserts
on the same measurements.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np
import trtserve_contract as contract
from trtserve_build.core import architectures as A
from trtserve_build.core.host import cpu_model
from trtserve_build.core.lazy import lazy_import
from trtserve_build.core.paths import cache_dir, fidelity_cache_path, record_path
from trtserve_build.core.pbtxt import read_config
from trtserve_build.core.records import EngineRecord
from trtserve_build.core.spec import parse_spec
from trtserve_build.core.stamps import read_json
from trtserve_build.data.datasets import corpus_texts
from trtserve_build.models.tiny import LABELS, checkpoint_folder
from trtserve_build.pipeline.build import build_engine, build_variant, with_precision
from trtserve_build.pipeline.steps import export
from trtserve_backend.parameters import PipelineParameters
from trtserve_server.embedded import EmbeddedServer, Ports

torch = lazy_import("torch")
transformers = lazy_import("transformers")
http = lazy_import("tritonclient.http")

log = logging.getLogger(__name__)

TASKS = ("classification", "embedding")
PRECISIONS = ("fp32", "fp16", "hybrid", "int8")
MAX_LEN = 64
BUCKETS = (16, 32, 64)
SHORT = {"classification": "classify", "embedding": "embed"}


def deployment_name(arch: str, task: str) -> str:
    return f"{arch.replace('-', '_')}_{SHORT[task]}"


def matrix_spec(arch: str, task: str, topology: str = "auto"):
    """A spec naming the architecture's local checkpoint folder (the way any user's would)."""
    data = {
        "name": deployment_name(arch, task), "task": task,
        "model": {"checkpoint": str(checkpoint_folder(arch)), "max_sequence_length": MAX_LEN,
                  "length_buckets": list(BUCKETS), **({"labels": list(LABELS)} if task == "classification" else {})},
        "batching": {"max_batch_size": 64, "optimal_batch_size": 16},
        # one intra-op thread: fourteen encoders share the test machine's two cores
        "engine": {"cpu": {"backend": "onnxruntime", "intra_op_threads": 1, "topology": topology},
                   "gpu": {"backend": "tensorrt"}},
        "precision": {"calibration_samples": 64, "fidelity_samples": 64},
    }
    return parse_spec(data)


def matrix_texts() -> list[str]:
    real = corpus_texts(limit=40)
    return real + [" ".join(real), "", "¡Qué película tan buena! 🎬🍿", "これは素晴らしい映画です。",
                   "Очень скучный фильм."]


# ---- the PyTorch reference ------------------------------------------------------------------
def pytorch_reference(spec, texts: Sequence[str]) -> np.ndarray:
    """What the deployment must return, computed with transformers: probabilities or embeddings."""
    path = spec.model.checkpoint
    tok = transformers.AutoTokenizer.from_pretrained(path)
    auto = transformers.AutoModelForSequenceClassification if spec.task == "classification" else transformers.AutoModel
    model = auto.from_pretrained(path, attn_implementation="eager").eval()
    outs = []
    for k in range(0, len(texts), 16):
        enc = tok(list(texts[k:k + 16]), padding=True, truncation=True, max_length=spec.model.max_sequence_length,
                  return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        if spec.task == "classification":
            outs.append(torch.softmax(out.logits, dim=-1).numpy())
        else:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            outs.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(outs)


# ---- stages -----------------------------------------------------------------------------------
def _stage(record: dict, name: str, fn) -> bool:
    started = time.perf_counter()
    try:
        record[name] = {"ok": True, **(fn() or {})}
    except Exception as e:  # noqa: BLE001 - the matrix records every failure with its reason
        record[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:800]}",
                        "where": traceback.format_exc().strip().splitlines()[-3][:300]}
    record[name]["seconds"] = round(time.perf_counter() - started, 2)
    log.info("%-22s %-10s %s %s", record["deployment"], name, "ok" if record[name]["ok"] else "FAIL",
             record[name].get("error", ""))
    return record[name]["ok"]


def build_stages(spec, arch: str, precisions: Sequence[str] = PRECISIONS) -> dict:
    """The pipeline's own stages: export (checked against PyTorch), then for each precision the
    ``gpu`` engine build: precision graph, TensorRT-RTX plan, fidelity gate. One record."""
    rec: dict = {"deployment": spec.name, "architecture": arch, "task": spec.task}

    def export_stage():
        m = export(spec)
        return {"inputs": list(m.inputs), "max_abs_diff": m.max_abs_diff, "min_cosine": m.min_cosine,
                "checked_texts": m.checked_texts}

    if not _stage(rec, "export", export_stage):
        return rec
    for precision in precisions:
        def engine_stage(precision=precision):
            variant_spec = with_precision(spec, "gpu", precision)
            plan = build_engine(variant_spec, "gpu")
            r = EngineRecord.load(record_path(plan))
            out = {"tensorrt": f"{r.tensorrt_flavour} {r.tensorrt_version}", "plan_bytes": r.plan_bytes,
                   "build_seconds": r.build_seconds}
            gate = read_json(fidelity_cache_path(variant_spec, precision)) if precision != "fp32" else None
            for row in (gate or {}).get("rows", []):
                if row["precision"] == precision:
                    out[row["set"]] = {k: row[k] for k in ("cosine_min", "cosine_mean", "nonfinite_fraction", "executor")}
            return out

        _stage(rec, precision, engine_stage)
    return rec


# ---- serving ------------------------------------------------------------------------------------
def _request(spec, texts: Sequence[str]):
    data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    inp = http.InferInput(contract.TEXT, list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    name = contract.PROBABILITIES if spec.task == "classification" else contract.EMBEDDING
    return name, dict(model_name=spec.name, inputs=[inp], outputs=[http.InferRequestedOutput(name)])


def served_outputs(client, spec, texts: Sequence[str]) -> np.ndarray:
    """The deployment's probabilities/embeddings for ``texts`` in one request."""
    name, request = _request(spec, texts)
    return client.infer(**request).as_numpy(name)


def concurrent_outputs(client, spec, texts: Sequence[str]) -> np.ndarray:
    """One request per text, all in flight at once (the dynamic batcher may merge them)."""
    pending = []
    for t in texts:
        name, request = _request(spec, [t])
        pending.append(client.async_infer(**request))
    return np.stack([p.get_result().as_numpy(name)[0] for p in pending])


def serve_stage(spec, url: str, texts: Sequence[str], reference: np.ndarray) -> dict:
    """Parity with PyTorch and batch invariance, measured over HTTP on the running server."""
    client = http.InferenceServerClient(url, concurrency=8)
    try:
        batched = np.concatenate([served_outputs(client, spec, texts[k:k + 16]) for k in range(0, len(texts), 16)])
        parity = float(np.abs(batched - reference).max())
        short = [t for t in texts if 0 < len(t) < 80][:12]
        alone = np.stack([served_outputs(client, spec, [t])[0] for t in short])
        long_text = max(texts, key=len)
        with_long = served_outputs(client, spec, short + [long_text])[:len(short)]
        merged = concurrent_outputs(client, spec, short)
        invariance = float(max(np.abs(alone - with_long).max(), np.abs(alone - merged).max()))
    finally:
        client.close()
    return {"max_abs_diff_vs_pytorch": parity, "texts": len(texts), "batch_invariance_max_abs_diff": invariance}


def declared_inputs(repo: Path, ensembles: Path, spec) -> dict:
    """The encoder inputs the generated configs declare: the served one model's (the cpu default,
    its pipeline parameters) and, in the same deployment generated as an ensemble, the tokenizer's
    outputs, the encoder's inputs and the ensemble's map."""
    one = read_config(repo / spec.name / "config.pbtxt")
    tokenizer = read_config(ensembles / spec.tokenizer_model / "config.pbtxt")
    encoder = read_config(ensembles / spec.encoder_model / "config.pbtxt")
    ensemble = read_config(ensembles / spec.name / "config.pbtxt")
    pipeline = PipelineParameters.from_parameters({k: v.string_value for k, v in one.parameters.items()})
    return {"pipeline_encoder_inputs": list(pipeline.encoder_inputs),
            "tokenizer_outputs": [t.name for t in tokenizer.output], "encoder_inputs": [t.name for t in encoder.input],
            "ensemble_step_inputs": list(ensemble.ensemble_scheduling.step[1].input_map)}


def run_matrix(architectures: Sequence[str] = tuple(A.ARCHITECTURES), tasks: Sequence[str] = TASKS, *,
               workdir: Path, precisions: Sequence[str] = PRECISIONS) -> list[dict]:
    """Every stage for every (architecture, task); one repository, one server. Records per deployment."""
    records, servable = [], []
    for arch in architectures:
        for task in tasks:
            spec = matrix_spec(arch, task)
            rec = build_stages(spec, arch, precisions)
            records.append(rec)
            if rec["export"]["ok"]:
                servable.append((spec, rec))
    texts = matrix_texts()
    repo = build_variant([s for s, _ in servable], "cpu", Path(workdir) / "repository" / "cpu")
    # the same deployments generated as ensembles too (not served): their configs are checked
    ensembles = build_variant([matrix_spec(rec["architecture"], rec["task"], "ensemble") for _, rec in servable],
                              "cpu", Path(workdir) / "repository" / "cpu_ensemble")
    for spec, rec in servable:
        _stage(rec, "repository", lambda: declared_inputs(repo, ensembles, spec))
    server = EmbeddedServer(repo, Ports.free(), log_path=Path(workdir) / "triton.log")
    server.start()
    try:
        server.wait_ready(timeout_s=600)
        for spec, rec in servable:
            reference = pytorch_reference(spec, texts)
            _stage(rec, "served", lambda: serve_stage(spec, server.http_url, texts, reference))
    finally:
        server.stop()
    return records


def _cell(result: dict | None, value) -> str:
    if not result:
        return "not run"
    if not result.get("ok"):
        return "**fails**: " + result.get("error", "?").split("\n")[0][:160]
    return value(result)


def _gate(r: dict) -> str:
    return f"{min(r['real']['cosine_min'], r['stress']['cosine_min']):.6f}"


def to_markdown(records: Sequence[dict], machine: str) -> str:
    """The architecture x stage table (one row per deployment) with the measured numbers."""
    lines = [
        f"Measured by `make arch-matrix` on {machine} ({time.strftime('%Y-%m-%d')}). Tiny seeded configs "
        "(2 layers, hidden 64): the numbers show that each stage works and how close it stays to "
        "FP32/PyTorch, not how a trained model behaves. export: ONNX Runtime vs PyTorch, max |diff| of the "
        "encoder output; fp16/hybrid/int8: min cosine to FP32 over real + stress text (FP16-faithful "
        "interpreter), the fidelity gate passed; plan: TensorRT-RTX plans built of the fp32/fp16/hybrid/int8 "
        "graphs; served: max |diff| of the served probabilities/embeddings vs PyTorch (HTTP, 45 real texts) "
        "and of one text's result across batch-mates (alone, beside a long text, concurrent requests).",
        "",
        "| architecture | task | encoder inputs | export | fp16 | hybrid | int8 | TensorRT-RTX plan | served vs PyTorch | batch-invariance |",
        "|---|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for rec in records:
        export_rec, served = rec.get("export"), rec.get("served")
        inputs = ", ".join(export_rec["inputs"]) if export_rec and export_rec.get("ok") else "-"
        built = [p for p in PRECISIONS if rec.get(p, {}).get("ok")]
        lines.append("| " + " | ".join([
            rec["architecture"], rec["task"], inputs,
            _cell(export_rec, lambda r: f"{r['max_abs_diff']:.1e}"),
            *(_cell(rec.get(p), _gate) for p in PRECISIONS[1:]),
            f"{len(built)}/{len(PRECISIONS)} built",
            _cell(served, lambda r: f"{r['max_abs_diff_vs_pytorch']:.1e}"),
            _cell(served, lambda r: f"{r['batch_invariance_max_abs_diff']:.1e}"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the architecture x stage matrix (tiny seeded checkpoints)")
    parser.add_argument("--architectures", nargs="*", default=list(A.ARCHITECTURES))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--output", type=Path, default=Path("docs/results/architectures.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    records = run_matrix(args.architectures, args.tasks, workdir=cache_dir() / "archs" / "matrix")
    machine = cpu_model() or "unknown CPU"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine, "results": records}, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(to_markdown(records, machine))
    print(args.output, args.output.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
