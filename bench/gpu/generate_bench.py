"""GPT-2 124M generation on the GPU machine, in one run (issue 11): served vs in-process.

    baseline (the image's python: transformers, torch)
        makes GPT-2 124M with seeded random weights + the real tokenizer (timing depends on shapes,
        not on weights), then measures in-process on the GPU:
          * Hugging Face ``generate`` fp16 eager: time to first token, inter-token latency p50/p95
            of one stream (per-step timestamps), generated tokens/s for batches of 1/8/32/64;
          * the project's engine in-process (TorchExecutor fp16 + CUDA graphs under the
            StepScheduler, no server): the same numbers at 1/8/32/64 concurrent sequences.
        Also the engine's step time alone (decode_step, greedy, all rows live) per batch size,
        and the CUDA graph replay alone, to tell the engine's time from the scheduler's.
    served (the stub venv's python: torch, tritonclient; no transformers)
        writes the ``generate`` repository (engine torch, KIND_GPU, fp16, CUDA graphs for decode
        batch sizes 1..64), starts the embedded Triton 2.51 and streams over gRPC from 1, 8, 32
        and 64 concurrent streams (client threads spread over --client-procs processes:
        generate_clients.py): TTFT p50/p95, inter-token p50/p95, generated tokens/s. With --ab
        the same engine is served a second time as ``generate_inline`` with the knob
        ``response_thread`` off (the engine thread sends every piece and asks every stream about
        cancellation each step, as before) and the two are measured alternately at each point.
        The models' step-phase seconds (engine thread) come from the server log.
    report
        the two JSON parts -> one JSON + a markdown table with the issue's two targets: served
        tokens/s at 32 streams >= 10x one stream's, and one stream's inter-token latency within
        1.5x of the in-process engine's.

Prompts: review snippets (real text), cut to --prompt-tokens tokens; every stream generates
--new-tokens tokens (greedy; EOS is not a stop for the timing run: max_new_tokens decides).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # loadtest/ (the build's text data)
for sub in ("contract", "serve", "client", "tools", "build"):
    sys.path.insert(0, str(ROOT / sub))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_clients import stream_clients, summary as _summary  # noqa: E402

STREAMS = (1, 8, 32, 64)
INLINE = "generate_inline"  # the A/B twin: response_thread off


def _prompts(path, tokenizer_encode, n_tokens, count=256):
    texts = [t.strip() for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
    out = []
    for t in texts:
        ids = tokenizer_encode(t)
        if len(ids) >= n_tokens:
            out.append(ids[:n_tokens])
        if len(out) == count:
            break
    return out


# ---- baseline (image python) ----------------------------------------------------------------

def baseline(args) -> dict:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, StoppingCriteria

    from trtserve_backend.generation.requests import GenerationRequest
    from trtserve_backend.generation.scheduler import StepScheduler
    from trtserve_backend.generation.text import TokenBytes
    from trtserve_backend.generation.torch_executor import TorchExecutor

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(0)
    size = dict(n_layer=12, n_embd=768, n_head=12) if args.size == "gpt2-124m" else dict(n_layer=2, n_embd=64, n_head=4)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, bos_token_id=50256, eos_token_id=50256, **size)
    model = GPT2LMHeadModel(cfg).eval()
    ckpt = Path(args.checkpoint_out)
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    tok.backend_tokenizer.save(str(ckpt / "tokenizer.json"))
    prompts = _prompts(args.prompts, lambda t: tok(t)["input_ids"], args.prompt_tokens)
    gpu = args.device == "cuda"
    model = model.half().cuda() if gpu else model
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    result = {"gpu": torch.cuda.get_device_name(0) if gpu else "none (CPU rehearsal, fp32)", "torch": torch.__version__,
              "model": f"GPT-2 {args.size} random (seed 0)",
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}

    class Stamp(StoppingCriteria):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            sync()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def hf_run(batch):
        ids = torch.tensor(prompts[:batch], device=args.device)
        stamp = Stamp()
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, stopping_criteria=[stamp], pad_token_id=50256)
        return start, stamp.times

    hf_run(1)  # warm-up
    hf = {}
    for batch in STREAMS:
        ttft, gaps, tokens, seconds = [], [], 0, 0.0
        for _ in range(args.repeats if batch == 1 else 1):
            start, times = hf_run(batch)
            ttft.append((times[0] - start) * 1000)
            gaps += [(b - a) * 1000 for a, b in zip(times, times[1:])]
            tokens += batch * len(times)
            seconds += times[-1] - start
        hf[str(batch)] = _summary(ttft, gaps, tokens, seconds)
        print(f"HF generate fp16 eager, batch {batch}: {hf[str(batch)]}", flush=True)
    result["hf_generate_fp16_eager"] = hf

    del model
    if gpu:
        torch.cuda.empty_cache()
    executor = TorchExecutor.from_checkpoint(str(ckpt), max_batch=64, dtype="fp16" if gpu else "fp32", device=args.device,
                                             graph_batch_sizes=[1, 2, 4, 8, 16, 32, 64], max_length=1024,
                                             max_prompt=512)  # as served: limits.max_prompt_tokens
    token_bytes = TokenBytes.from_tokenizer_json(str(ckpt / "tokenizer.json"))
    result["engine_step_ms"] = _step_times(torch, executor, prompts, sync)
    print(f"engine step alone (ms): {result['engine_step_ms']}", flush=True)
    engine = {}
    for streams in STREAMS:
        engine[str(streams)] = _engine_run(StepScheduler(executor, token_bytes, eos_id=-1, max_sequences=128),
                                           GenerationRequest, prompts, streams, args.new_tokens,
                                           args.repeats if streams == 1 else 1)
        print(f"in-process engine fp16 + CUDA graphs, {streams} sequences: {engine[str(streams)]}", flush=True)
    result["inprocess_engine_fp16_graphs"] = engine
    return result


def _step_times(torch, executor, prompts, sync, steps=20):
    """Per batch size: one greedy decode_step with every row live (median ms), and the CUDA
    graph's replay alone where there is one (the engine's GPU time plus launch)."""
    out = {}
    for b in (1, 8, 32, 33, 48, 64):
        if b > executor.max_batch:
            continue
        for slot in range(b):
            executor.prefill(slot, prompts[slot % len(prompts)])
        slots, times = list(range(b)), []
        for _ in range(steps):
            sync()
            t = time.perf_counter()
            executor.decode_step(slots, [11] * b, [False] * b)
            times.append((time.perf_counter() - t) * 1000)
        row = {"decode_step_ms": round(sorted(times)[len(times) // 2], 3)}
        graph = next((executor._graphs[g] for g in sorted(executor._graphs) if g >= b), None)
        if graph is not None:
            replays = []
            for _ in range(steps):
                sync()
                t = time.perf_counter()
                graph[0].replay()
                sync()
                replays.append((time.perf_counter() - t) * 1000)
            row["graph_replay_ms"] = round(sorted(replays)[len(replays) // 2], 3)
            row["graph_batch"] = next(g for g in sorted(executor._graphs) if g >= b)
        out[str(b)] = row
        for slot in slots:
            executor.release(slot)
    for k in (1, 8):  # a prompt step: k prompts joining at one boundary, one prefill_batch
        times = []
        for _ in range(steps):
            sync()
            t = time.perf_counter()
            executor.prefill_batch(list(range(k)), [prompts[i % len(prompts)] for i in range(k)])
            sync()
            times.append((time.perf_counter() - t) * 1000)
            for slot in range(k):
                executor.release(slot)
        out[f"prefill_{k}"] = {"prefill_batch_ms": round(sorted(times)[len(times) // 2], 3)}
    return out


def _engine_run(scheduler, GenerationRequest, prompts, streams, new_tokens, repeats):
    ttft, gaps, tokens, seconds = [], [], 0, 0.0

    class Sink:
        def __init__(self, start):
            self.start, self.times, self.done = start, [], False

        def send(self, text):
            self.times.append(time.perf_counter())

        def finish(self, text, reason, n):
            self.times.append(time.perf_counter())
            self.done, self.n = True, n

        def fail(self, message):
            raise RuntimeError(message)

        def cancelled(self):
            return False

    for _ in range(repeats):
        start = time.perf_counter()
        sinks = [Sink(start) for _ in range(streams)]
        for i, sink in enumerate(sinks):
            scheduler.submit(GenerationRequest(list(prompts[i % len(prompts)]), new_tokens), sink)
        while scheduler.pending():
            scheduler.step()
        seconds += max(s.times[-1] for s in sinks) - start
        for s in sinks:
            ttft.append((s.times[0] - start) * 1000)
            gaps += [(b - a) * 1000 for a, b in zip(s.times, s.times[1:])]
            tokens += s.n
    return _summary(ttft, gaps, tokens, seconds)


# ---- served (stub venv) ---------------------------------------------------------------------

def served(args) -> dict:
    from dataclasses import replace

    from google.protobuf import text_format
    from tokenizers import Tokenizer
    from tritonclient.grpc import model_config_pb2 as mc

    from trtserve_backend.generation.requests import GenerationLimits
    from trtserve_build.pipeline.generate import write_generate
    from trtserve_build.stages.generate_config import GenerateSettings
    from trtserve_server.embedded import EmbeddedServer, Ports

    ckpt = Path(args.checkpoint)
    limits = GenerationLimits(context_length=args.context, max_prompt_tokens=min(512, args.context // 2),
                              max_new_tokens=min(512, args.context // 2), default_max_new_tokens=64,
                              max_sequences=256)
    repo = Path(args.repository)
    gpu = not args.force_cpu
    settings = GenerateSettings(limits=limits, max_batch_size=64, max_decode_batch=64, engine=args.engine,
                                precision="fp16" if gpu else "fp32", graph_batch_sizes=(1, 2, 4, 8, 16, 32, 64), gpu=gpu,
                                eos_token_id=50256)
    engine_file = ckpt
    if args.engine == "onnxruntime":
        from trtserve_build.stages.decoder_export import export_decoder_onnx

        engine_file = export_decoder_onnx(ckpt, repo.parent / "onnx")[0]
        settings = replace(settings, graph_batch_sizes=(), intra_op_threads=args.intra_op_threads)
    models = ["generate"] + ([INLINE] if args.ab else [])
    for name in models:
        folder = write_generate(repo, engine_file, ckpt, settings, name=name)
        if name == INLINE:  # the knob, set in the written config (the same ModelConfig protobuf)
            config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
            config.parameters["response_thread"].string_value = "false"
            (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    prompts = [tok.decode(ids) for ids in _prompts(args.prompts, lambda t: tok.encode(t).ids, args.prompt_tokens)]
    log = Path(args.log)
    server = EmbeddedServer(repo, Ports.free(), log_path=log, extra_args=["--log-info=true"])
    server.start()
    result = {"client_procs": args.client_procs, "models": {m: {} for m in models}}
    try:
        from trtserve_client import TrtServeClient

        deadline = time.monotonic() + 300
        for name in models:
            while True:
                try:
                    with TrtServeClient(server.grpc_url, timeout_s=60) as c:
                        c.generate_text("ready", max_new_tokens=1, model=name)
                    break
                except Exception:  # noqa: BLE001 - loading
                    if time.monotonic() > deadline or server.process.poll() is not None:
                        raise
                    time.sleep(1)
        for streams in map(int, args.streams.split(",")):
            for name in (models if streams % 2 else models[::-1]):  # alternate which goes first
                r = stream_clients(server.grpc_url, name, prompts, streams, args.new_tokens, args.seconds,
                                   args.client_procs)
                result["models"][name][str(streams)] = r
                print(f"served over gRPC, {name}, {streams} streams: {r}", flush=True)
    finally:
        server.stop()
    result["streams"] = result["models"]["generate"]
    result["engine_thread"] = _stats_lines(log, models)
    print(f"engine thread per model: {result['engine_thread']}", flush=True)
    return result


def _stats_lines(log: Path, models) -> dict:
    """The ``<model> stats: ...`` line each model logs when it is unloaded (SchedulerStats)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    out = {}
    for name in models:
        found = re.findall(rf"\b{re.escape(name)} stats: (.*)", text)
        out[name] = found[-1].strip().rstrip('"') if found else None
    return out


# ---- report ---------------------------------------------------------------------------------

def report(args) -> dict:
    base = json.loads(Path(args.baseline_json).read_text())
    srv = json.loads(Path(args.served_json).read_text())
    s1, s32 = srv["streams"]["1"], srv["streams"]["32"]
    eng1 = base["inprocess_engine_fp16_graphs"]["1"]
    out = {**base, "served_grpc": srv["streams"], "served_ab": srv.get("models"), "client_procs": srv.get("client_procs"),
           "engine_thread": srv.get("engine_thread"), "targets": {
               "served_tokens_per_s_32_over_1": round(s32["tokens_per_s"] / s1["tokens_per_s"], 2),
               "served_inter_token_p50_over_inprocess_engine": round(s1["inter_token_ms_p50"] / eng1["inter_token_ms_p50"], 2),
               "served_inter_token_p50_over_hf": round(s1["inter_token_ms_p50"]
                                                       / base["hf_generate_fp16_eager"]["1"]["inter_token_ms_p50"], 2)}}
    out["targets"]["met_10x_at_32"] = out["targets"]["served_tokens_per_s_32_over_1"] >= 10
    out["targets"]["met_1_5x_latency"] = out["targets"]["served_inter_token_p50_over_inprocess_engine"] <= 1.5
    subjects = [("served over gRPC", srv["streams"])]
    if INLINE in (srv.get("models") or {}):
        subjects.append(("served, response_thread off (A/B)", srv["models"][INLINE]))
    subjects += [("engine in-process", base["inprocess_engine_fp16_graphs"]),
                 ("HF generate fp16 eager (batch)", base["hf_generate_fp16_eager"])]
    rows = ["| streams | subject | TTFT p50 / p95 ms | inter-token p50 / p95 ms | tokens/s | pieces/token |",
            "|---:|---|---:|---:|---:|---:|"]
    for n in map(str, STREAMS):
        for name, part in subjects:
            if n not in part:
                continue
            r = part[n]
            rows.append(f"| {n} | {name} | {r['ttft_ms_p50']} / {r['ttft_ms_p95']} | {r['inter_token_ms_p50']} / "
                        f"{r['inter_token_ms_p95']} | {r['tokens_per_s']} | {r.get('pieces_per_token', '')} |")
    steps = ["| batch | decode_step ms (greedy, all rows live) | CUDA graph replay ms | graph batch |", "|---:|---:|---:|---:|"]
    for b, r in (base.get("engine_step_ms") or {}).items():
        if "prefill_batch_ms" in r:
            steps.append(f"| {b.replace('_', ' ')} prompts | prompt step {r['prefill_batch_ms']} ms | | |")
            continue
        steps.append(f"| {b} | {r['decode_step_ms']} | {r.get('graph_replay_ms', '')} | {r.get('graph_batch', '')} |")
    md = [f"GPT-2 124M (random weights), {base['prompt_tokens']}-token prompts, {base['new_tokens']} new tokens, "
          f"{base['gpu']}, torch {base['torch']}; served clients in {srv.get('client_procs', 1)} processes", "", *rows, "",
          *steps, "", *(f"engine thread, {m}: {line}" for m, line in (srv.get("engine_thread") or {}).items()), "",
          f"targets: {json.dumps(out['targets'])}"]
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.markdown).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline")
    b.add_argument("--tokenizer", required=True)
    b.add_argument("--checkpoint-out", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a rehearsal of the plumbing (fp32)")
    b.add_argument("--size", default="gpt2-124m", choices=["gpt2-124m", "tiny"], help="tiny: for a CPU rehearsal")
    s = sub.add_parser("served")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--repository", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seconds", type=float, default=15.0)
    s.add_argument("--force-cpu", action="store_true", help="rehearsal without a GPU (fp32 on the CPU)")
    s.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"],
                   help="onnxruntime: the embedded server's CPU engine (exported here; CPU runs)")
    s.add_argument("--intra-op-threads", type=int, default=0, help="onnxruntime: intra-op threads (0 = its default)")
    s.add_argument("--context", type=int, default=1024, help="the checkpoint's positions (limits follow)")
    s.add_argument("--ab", action="store_true", help=f"also serve {INLINE} (response_thread off), measured alternately")
    s.add_argument("--client-procs", type=int, default=8, help="client processes the streams are spread over")
    s.add_argument("--streams", default=",".join(map(str, STREAMS)))
    for q in (b, s):
        q.add_argument("--prompts", default=str(ROOT / "loadtest" / "data" / "review_snippets.txt"))
        q.add_argument("--prompt-tokens", type=int, default=32)
        q.add_argument("--new-tokens", type=int, default=128)
        q.add_argument("--repeats", type=int, default=5)
    r = sub.add_parser("report")
    r.add_argument("--baseline-json", required=True)
    r.add_argument("--served-json", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--markdown", required=True)
    args = p.parse_args(argv)
    if args.command == "report":
        report(args)
        return 0
    out = baseline(args) if args.command == "baseline" else served(args)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
