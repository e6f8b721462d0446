"""Question answering and NER served by the gpu_torch variant (issue 14), checked against FP32.

Two parts, each run with the Python that has what it needs (bench/gpu/run_qa_ner_gpu.sh):

``reference`` (the image's python: torch + transformers): the answers of the same seeded random
    weights the served TorchScript was traced from, in FP32 eager PyTorch on the GPU, behind the
    project's own window tokenizer and postprocess read from the generated one-model config. That
    tokenizer and postprocess, with an FP32 engine, are what the CPU exactness tests prove equal to
    ``transformers``' question-answering and token-classification pipelines (which transformers 5
    on the GPU machine no longer has for QA), so "served == this reference" extends that proof to
    the GPU engine: TorchScript, CUDA graphs, padding of windows from concurrent requests.
``check`` (the stub's python): the embedded Triton serving a gpu_torch repository; every QA pair
    and NER text over gRPC, singly and as concurrent multi-item requests; compared with the
    reference: equal answers and offsets (QA), equal entity lists (NER), scores within a tolerance.

    python3 bench/gpu/qa_ner_gpu.py reference --repository R --config C --texts T --out ref.json
    python3 bench/gpu/qa_ner_gpu.py check --repository R --reference ref.json --out check.json --log L
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "build"), str(ROOT / "serve"), str(ROOT / "contract"), str(ROOT)]

DEPLOYMENTS = ("qa", "ner")


def log(msg: str) -> None:
    print(f"[qa_ner_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def workload(texts_file: str, pairs: int, ner_count: int):
    """The exactness tests' real text (cloze QA pairs, NER snippets), from the review snippets."""
    from loadtest.qa_ner_workload import cloze_pairs, ner_texts

    corpus = [t for t in Path(texts_file).read_text(encoding="utf-8").splitlines() if t.strip()]
    return cloze_pairs(corpus, pairs), ner_texts(corpus, ner_count)


def one_model_config(repository: Path, name: str):
    from google.protobuf.json_format import MessageToDict

    from trtserve_backend.model_config import PythonModelConfig
    from trtserve_build.core.pbtxt import read_config

    return PythonModelConfig.from_dict(MessageToDict(read_config(repository / name / "config.pbtxt"),
                                                     preserving_proto_field_name=True))


class EagerEngine:
    """``run_requests`` of the served engines, computed by an FP32 eager module (one call per request)."""

    merge = "group"

    def __init__(self, module, device: str):
        self.module, self.device = module, device

    def run_requests(self, requests, to_host: bool = True, merge=None):
        import torch

        out = []
        with torch.no_grad():
            for feeds in requests:
                args = [torch.as_tensor(np.asarray(v), dtype=torch.int64, device=self.device) for v in feeds.values()]
                out.append(self.module(*args).float().cpu().numpy())
        return out


def reference_pipeline(repository: Path, name: str, config_json: str, seed: int, device: str):
    from trtserve_backend.parameters import PipelineParameters, PostprocessParameters, TokenizerParameters
    from trtserve_backend.pipeline import Pipeline
    from trtserve_backend.steps import make_step_postprocess, make_tokenizer, windowed
    from trtserve_build.models.heads import task_module
    from trtserve_build.models.loader import random_task_model

    cfg = one_model_config(repository, name)
    params = PipelineParameters.from_config(cfg)
    post = PostprocessParameters.from_config(cfg)
    folder = str(repository / name / "1")
    model = random_task_model(config_json, post.task, seed=seed, labels=post.labels).to(device)
    module = task_module(model, post.task, params.encoder_inputs)
    return Pipeline(make_tokenizer(TokenizerParameters.from_config(cfg), folder, params.encoder_inputs),
                    EagerEngine(module, device), make_step_postprocess(post, folder),
                    encoder_inputs=params.encoder_inputs, encoder_output=params.encoder_output,
                    side_inputs=params.side_inputs, windows=windowed(post.task))


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def qa_rows(outputs: dict) -> list[dict]:
    return [{"answer": _decode(a), "score": float(s), "start": int(b), "end": int(e)}
            for a, s, b, e in zip(np.ravel(outputs["ANSWER"]), np.ravel(outputs["SCORE"]),
                                  np.ravel(outputs["START"]), np.ravel(outputs["END"]))]


def ner_rows(outputs: dict) -> list[list[dict]]:
    return [json.loads(_decode(v)) for v in np.ravel(outputs["ENTITIES"])]


def per_item(pipeline, items: list, parse) -> list:
    """Each item as a request of its own (a request's windows are capped by ``max_windows``)."""
    rows = []
    for result in pipeline.run([[item] for item in items]):
        if isinstance(result, Exception) or result is None:
            raise RuntimeError(f"reference pipeline failed on an item: {result!r}")
        rows.extend(parse(result))
    return rows


def reference(args) -> int:
    pairs, texts = workload(args.texts, args.pairs, args.ner_texts)
    repository = Path(args.repository)
    result = {"weights": f"random (seed {args.seed}) in the architecture of {args.config}", "device": args.device}
    started = time.perf_counter()
    qa = reference_pipeline(repository, "qa", args.config, args.seed, args.device)
    result["qa"] = {"items": [{"question": p.question, "context": p.context} for p in pairs],
                    "outputs": per_item(qa, [(p.question, p.context) for p in pairs], qa_rows)}
    ner = reference_pipeline(repository, "ner", args.config, args.seed, args.device)
    result["ner"] = {"items": texts, "outputs": per_item(ner, texts, ner_rows)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(result))
    log(f"reference: {len(pairs)} QA pairs, {len(texts)} NER texts in {result['seconds']} s")
    return 0


def compare_qa(served: list[dict], ref: list[dict], tolerance: float) -> dict:
    same = [s["answer"] == r["answer"] and (s["start"], s["end"]) == (r["start"], r["end"]) for s, r in zip(served, ref)]
    pairs = [(s["score"], r["score"]) for s, r, ok in zip(served, ref, same) if ok]
    return {"items": len(ref), "answers_equal": int(sum(same)), "agreement": round(sum(same) / len(ref), 4),
            **score_diffs(pairs, tolerance)}


def score_diffs(pairs: list[tuple[float, float]], tolerance: float) -> dict:
    """Largest absolute and relative score differences (the random heads' QA scores are ~1e-3, so
    an absolute tolerance alone says little); within tolerance when either is."""
    absolute = [abs(a - b) for a, b in pairs]
    relative = [abs(a - b) / max(abs(b), 1e-12) for a, b in pairs]
    return {"max_score_diff": max(absolute, default=0.0), "max_score_rel_diff": max(relative, default=0.0),
            "scores_within_tolerance": all(d <= tolerance or r <= tolerance for d, r in zip(absolute, relative))}


def _entity_key(entity: dict):
    return (entity.get("entity_group", entity.get("entity")), entity["start"], entity["end"], entity["word"])


def compare_ner(served: list[list[dict]], ref: list[list[dict]], tolerance: float) -> dict:
    same = [[_entity_key(e) for e in s] == [_entity_key(e) for e in r] for s, r in zip(served, ref)]
    pairs = [(a["score"], b["score"]) for s, r, ok in zip(served, ref, same) if ok for a, b in zip(s, r)]
    return {"items": len(ref), "entities": sum(len(r) for r in ref), "lists_equal": int(sum(same)),
            "agreement": round(sum(same) / len(ref), 4), **score_diffs(pairs, tolerance)}


def check(args) -> int:
    import tritonclient.grpc as grpcclient

    from trtserve_server.embedded import EmbeddedServer, Ports

    ref = json.loads(Path(args.reference).read_text())
    result: dict = {"repository": args.repository, "label": args.label, "tolerance": args.tolerance}
    server = EmbeddedServer(Path(args.repository), Ports.free(), log_path=Path(args.log))
    started = time.perf_counter()
    with server:
        result["text_models"] = server.wait_ready(300)
        result["ready_s"] = round(time.perf_counter() - started, 1)
        log(f"{args.label}: ready in {result['ready_s']} s: {result['text_models']}")

        def infer(name: str, columns: dict[str, list[str]], outputs: list[str]) -> dict:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            inputs = []
            for column, values in columns.items():
                tensor = grpcclient.InferInput(column, [len(values), 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=np.object_))
                inputs.append(tensor)
            reply = client.infer(name, inputs)
            client.close()
            return {o: reply.as_numpy(o) for o in outputs}

        def served(name: str, rows, columns, outputs, parse, group: int):
            """Every item, in requests of ``group`` items sent by ``--clients`` concurrent clients."""
            batches = [rows[i:i + group] for i in range(0, len(rows), group)]
            with ThreadPoolExecutor(args.clients) as pool:
                parts = pool.map(lambda b: parse(infer(name, columns(b), outputs)), batches)
            return [row for part in parts for row in part]

        qa_items = ref["qa"]["items"]
        qa_columns = lambda b: {"QUESTION": [i["question"] for i in b], "CONTEXT": [i["context"] for i in b]}  # noqa: E731
        ner_columns = lambda b: {"TEXT": list(b)}  # noqa: E731
        for group in (1, 8):
            t0 = time.perf_counter()
            got = served("qa", qa_items, qa_columns, ["ANSWER", "SCORE", "START", "END"], qa_rows, group)
            result[f"qa_requests_of_{group}"] = {**compare_qa(got, ref["qa"]["outputs"], args.tolerance),
                                                 "seconds": round(time.perf_counter() - t0, 2)}
            t0 = time.perf_counter()
            got = served("ner", ref["ner"]["items"], ner_columns, ["ENTITIES"], ner_rows, group)
            result[f"ner_requests_of_{group}"] = {**compare_ner(got, ref["ner"]["outputs"], args.tolerance),
                                                  "seconds": round(time.perf_counter() - t0, 2)}
            log(f"{args.label} requests of {group}: qa {result[f'qa_requests_of_{group}']}, "
                f"ner {result[f'ner_requests_of_{group}']}")
        # the server answers a bad request with an error and the next good one as before
        try:
            infer("qa", {"QUESTION": [""], "CONTEXT": [""]}, ["ANSWER"])
            result["empty_question"] = "answered"
        except Exception as e:  # noqa: BLE001 - the message is what is recorded
            result["empty_question"] = f"error: {str(e)[:200]}"
        again = qa_rows(infer("qa", qa_columns(qa_items[:1]), ["ANSWER", "SCORE", "START", "END"]))
        result["good_after_bad"] = compare_qa(again, ref["qa"]["outputs"][:1], args.tolerance)["answers_equal"] == 1
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--repository", required=True)
    r.add_argument("--config", required=True, help="config.json of the architecture (the random weights')")
    r.add_argument("--texts", required=True, help="review snippets, one per line")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--pairs", type=int, default=220)
    r.add_argument("--ner-texts", type=int, default=220)
    r.add_argument("--device", default="cuda")
    c = sub.add_parser("check")
    c.add_argument("--repository", required=True)
    c.add_argument("--reference", required=True)
    c.add_argument("--label", default="gpu_torch")
    c.add_argument("--tolerance", type=float, default=1e-3)
    c.add_argument("--clients", type=int, default=8, help="concurrent clients (1 for a CPU dry run)")
    c.add_argument("--out", required=True)
    c.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    return reference(args) if args.command == "reference" else check(args)


if __name__ == "__main__":
    sys.exit(main())
