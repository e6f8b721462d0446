"""GPT-2 124M generation on the GPU machine, in one run (issue 11): served vs in-process.

    baseline (the image's python: transformers, torch)
        makes GPT-2 124M with seeded random weights + the real tokenizer (timing depends on shapes,
        not on weights), then measures in-process on the GPU:
          * Hugging Face ``generate`` fp16 eager: time to first token, inter-token latency p50/p95
            of one stream (per-step timestamps), generated tokens/s for batches of 1/8/32/64;
          * the project's engine in-process (TorchExecutor fp16 + CUDA graphs under the
            StepScheduler, no server): the same numbers at 1/8/32/64 concurrent sequences.
    served (the stub venv's python: torch, tritonclient; no transformers)
        writes the ``generate`` repository (engine torch, KIND_GPU, fp16, CUDA graphs for decode
        batch sizes 1..64), starts the embedded Triton 2.51 and streams over gRPC from 1, 8, 32
        and 64 client threads: TTFT p50/p95, inter-token p50/p95, generated tokens/s.
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
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for sub in ("contract", "serve", "client", "tools", "build"):
    sys.path.insert(0, str(ROOT / sub))

STREAMS = (1, 8, 32, 64)


def _pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 3)


def _summary(ttft_ms, gaps_ms, tokens, seconds):
    return {"ttft_ms_p50": _pct(ttft_ms, 50), "ttft_ms_p95": _pct(ttft_ms, 95),
            "inter_token_ms_p50": _pct(gaps_ms, 50), "inter_token_ms_p95": _pct(gaps_ms, 95),
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


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
                                             graph_batch_sizes=[1, 2, 4, 8, 16, 32, 64], max_length=1024)
    token_bytes = TokenBytes.from_tokenizer_json(str(ckpt / "tokenizer.json"))
    engine = {}
    for streams in STREAMS:
        engine[str(streams)] = _engine_run(StepScheduler(executor, token_bytes, eos_id=-1, max_sequences=128),
                                           GenerationRequest, prompts, streams, args.new_tokens,
                                           args.repeats if streams == 1 else 1)
        print(f"in-process engine fp16 + CUDA graphs, {streams} sequences: {engine[str(streams)]}", flush=True)
    result["inprocess_engine_fp16_graphs"] = engine
    return result


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
    from tokenizers import Tokenizer

    from trtserve_backend.generation.requests import GenerationLimits
    from trtserve_build.pipeline.generate import write_generate
    from trtserve_build.stages.generate_config import GenerateSettings
    from trtserve_server.embedded import EmbeddedServer, Ports

    ckpt = Path(args.checkpoint)
    limits = GenerationLimits(context_length=1024, max_prompt_tokens=512, max_new_tokens=512,
                              default_max_new_tokens=64, max_sequences=256)
    repo = Path(args.repository)
    gpu = not args.force_cpu
    settings = GenerateSettings(limits=limits, max_batch_size=64, max_decode_batch=64, engine="torch",
                                precision="fp16" if gpu else "fp32", graph_batch_sizes=(1, 2, 4, 8, 16, 32, 64), gpu=gpu,
                                eos_token_id=50256)
    write_generate(repo, ckpt, ckpt, settings)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    prompts = [tok.decode(ids) for ids in _prompts(args.prompts, lambda t: tok.encode(t).ids, args.prompt_tokens)]
    server = EmbeddedServer(repo, Ports.free(), log_path=Path(args.log))
    server.start()
    result = {"streams": {}}
    try:
        from trtserve_client import TrtServeClient

        deadline = time.monotonic() + 300
        while True:
            try:
                with TrtServeClient(server.grpc_url, timeout_s=60) as c:
                    c.generate_text("ready", max_new_tokens=1)
                break
            except Exception:  # noqa: BLE001 - loading
                if time.monotonic() > deadline or server.process.poll() is not None:
                    raise
                time.sleep(1)
        for streams in STREAMS:
            result["streams"][str(streams)] = _served_run(server.grpc_url, prompts, streams, args.new_tokens, args.seconds)
            print(f"served over gRPC, {streams} streams: {result['streams'][str(streams)]}", flush=True)
    finally:
        server.stop()
    return result


def _served_run(url, prompts, streams, new_tokens, seconds):
    from trtserve_client import TrtServeClient

    ttft, gaps, lock = [], [], threading.Lock()
    counts = {"tokens": 0, "streams": 0, "errors": 0}
    stop_at = time.monotonic() + seconds
    started = time.perf_counter()

    def worker(i):
        with TrtServeClient(url, timeout_s=120) as client:
            n = i
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                times = []
                try:
                    stream = client.generate(prompts[n % len(prompts)], max_new_tokens=new_tokens)
                    for _ in stream:
                        times.append(time.perf_counter())
                except Exception as e:  # noqa: BLE001 - counted
                    with lock:
                        counts["errors"] += 1
                    print(f"stream error: {e}", flush=True)
                    continue
                with lock:
                    if times:
                        ttft.append((times[0] - start) * 1000)
                        gaps.extend((b - a) * 1000 for a, b in zip(times, times[1:]))
                    counts["tokens"] += stream.tokens or 0
                    counts["streams"] += 1
                n += streams

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = _summary(ttft, gaps, counts["tokens"], time.perf_counter() - started)
    out.update(streams_done=counts["streams"], errors=counts["errors"])
    return out


# ---- report ---------------------------------------------------------------------------------

def report(args) -> dict:
    base = json.loads(Path(args.baseline_json).read_text())
    srv = json.loads(Path(args.served_json).read_text())
    s1, s32 = srv["streams"]["1"], srv["streams"]["32"]
    eng1 = base["inprocess_engine_fp16_graphs"]["1"]
    out = {**base, "served_grpc": srv["streams"], "targets": {
        "served_tokens_per_s_32_over_1": round(s32["tokens_per_s"] / s1["tokens_per_s"], 2),
        "served_inter_token_p50_over_inprocess_engine": round(s1["inter_token_ms_p50"] / eng1["inter_token_ms_p50"], 2),
        "served_inter_token_p50_over_hf": round(s1["inter_token_ms_p50"]
                                                / base["hf_generate_fp16_eager"]["1"]["inter_token_ms_p50"], 2)}}
    out["targets"]["met_10x_at_32"] = out["targets"]["served_tokens_per_s_32_over_1"] >= 10
    out["targets"]["met_1_5x_latency"] = out["targets"]["served_inter_token_p50_over_inprocess_engine"] <= 1.5
    rows = ["| streams | subject | TTFT p50 / p95 ms | inter-token p50 / p95 ms | tokens/s |", "|---:|---|---:|---:|---:|"]
    for n in map(str, STREAMS):
        for name, part in (("served over gRPC", srv["streams"]), ("engine in-process", base["inprocess_engine_fp16_graphs"]),
                           ("HF generate fp16 eager (batch)", base["hf_generate_fp16_eager"])):
            r = part[n]
            rows.append(f"| {n} | {name} | {r['ttft_ms_p50']} / {r['ttft_ms_p95']} | {r['inter_token_ms_p50']} / "
                        f"{r['inter_token_ms_p95']} | {r['tokens_per_s']} |")
    md = [f"GPT-2 124M (random weights), {base['prompt_tokens']}-token prompts, {base['new_tokens']} new tokens, "
          f"{base['gpu']}, torch {base['torch']}", "", *rows, "", f"targets: {json.dumps(out['targets'])}"]
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
