"""Issue 13's engine target (BERT-base >= 22k seq/s at sequence 128): can a batch split over CUDA
streams, all in one CUDA graph, overlap one part's memory-bound kernels (bias + LayerNorm, attention)
with another part's GEMMs? At 256x128 the fused engine's GEMMs take ~85% of the forward and the
rest ~1.5 ms runs alone (bench/gpu/NOTES.md, sessions 8-15).

The served engine (trtserve_build.stages.compiled, fp16, add+LN "epilogue", its no-mask program
for full rows), random weights, 128 tokens. Arms, measured in interleaved rounds (CUDA events over
back-to-back calls): one stream at each batch, CUDA graph (as served) and eager; S streams of
batch/S rows each, forked from and joined to the current stream, eager. Sequences per second; medians of the rounds. Also one-stream arms captured while torch prefers
cuBLASLt over cuBLAS for its GEMMs (``--blas``).

    python3 bench/gpu/streams_bench.py --out streams.json [--batches 256,384,512] [--streams 2,4] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / d) for d in ("build", "serve", "contract")]

from timing import exit_on_sigterm, gpu_info, write_json  # noqa: E402

import trtserve_contract as contract  # noqa: E402

NAMES = contract.ENCODER_INPUTS
SEQ = 128


def log(msg: str) -> None:
    print(f"[streams_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_engine(max_batch: int):
    """The served fused engine's no-mask program (as engine_bench.fused_rows builds it)."""
    from transformers import BertConfig, BertForSequenceClassification

    import torch
    from engine_bench import check_feeds
    from trtserve_backend.programs import load_program
    from trtserve_build.core.paths import full_rows_path
    from trtserve_build.stages import compiled
    from trtserve_build.stages import torchscript as ts

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval().cuda()
    path = Path(tempfile.mkdtemp(prefix="streams_")) / "fp16.pt"
    record = compiled.make_compiled(model, contract.CLASSIFICATION, "fp16", NAMES, check_feeds(),
                                    ts.PrecisionGate(min_cosine=ts.SANITY_MIN_COSINE), path, output=contract.LOGITS,
                                    max_batch=max_batch, max_seq=512, device="cuda", engine_format="fused",
                                    norm="epilogue")
    log(f"engine built: vs fp32 {record.vs_fp32}")
    return load_program(full_rows_path(path), "cuda")


def arm(module, batch: int, streams: int, graph: bool):
    """``batch`` rows as ``streams`` parts on as many streams (forked from and joined to the current
    one); ``graph``: captured in one CUDA graph (one stream only: a capture forked over streams
    crashed on replay with an illegal memory access here), else launched eagerly (the GPU runs well
    behind the launches at these sizes). Returns (call, outputs of the last call)."""
    import torch

    seeded = torch.Generator(device="cuda").manual_seed(batch)  # every arm of a batch: the same rows
    inputs = torch.randint(1000, 30000, (len(NAMES), batch, SEQ), device="cuda", generator=seeded)
    inputs[NAMES.index(contract.ATTENTION_MASK)].fill_(1)
    inputs[NAMES.index(contract.TOKEN_TYPE_IDS)].zero_()
    parts = [inputs[:, i * batch // streams:(i + 1) * batch // streams] for i in range(streams)]
    side = [torch.cuda.Stream() for _ in range(streams)]
    outs: list = []

    def forward():
        main = torch.cuda.current_stream()
        outs.clear()
        for stream, part in zip(side, parts):
            stream.wait_stream(main)
            with torch.cuda.stream(stream), torch.no_grad(), torch.jit.optimized_execution(False):
                outs.append(module(*part))
        for stream, out in zip(side, outs):
            main.wait_stream(stream)
            out.record_stream(main)
        return outs

    if not graph:
        forward()
        return forward, outs
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm), torch.no_grad(), torch.jit.optimized_execution(False):
        for _ in range(3):
            module(*inputs)
    torch.cuda.current_stream().wait_stream(warm)
    torch.cuda.synchronize()
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph), torch.no_grad(), torch.jit.optimized_execution(False):
        output = module(*inputs)
    torch.cuda.synchronize()

    def replay():  # the closure keeps the graph's input buffer alive (the graph holds only its address)
        cuda_graph.replay()
        return inputs

    return replay, [output]


def seq_per_s(replay, batch: int, iters: int = 40) -> float:
    import torch

    for _ in range(3):
        replay()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        replay()
    end.record()
    end.synchronize()
    return batch * iters * 1000.0 / begin.elapsed_time(end)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", default="256,384,512")
    parser.add_argument("--streams", default="2,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blas", default="cublas",
                        help="torch's preferred BLAS library while capturing (a graph keeps the kernels it captured): "
                             "one-stream arms per library, split arms with the first")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    import torch

    batches = [int(b) for b in args.batches.split(",")]
    counts = [1, *(int(s) for s in args.streams.split(","))]
    result: dict = {"machine": gpu_info(), "engine": "BERT-base fp16 fused (add+LN epilogue), no-mask program, "
                    f"random weights, {SEQ} tokens", "rounds": [], "medians": {}}
    try:
        module = build_engine(max(batches))
        arms, check = {}, {}
        libraries = args.blas.split(",")
        for library in libraries:
            torch.backends.cuda.preferred_blas_library(library)
            for batch in batches:
                arms[f"{batch} graph {library}"] = (arm(module, batch, 1, graph=True), batch)
        torch.backends.cuda.preferred_blas_library(libraries[0])
        for batch in batches:
            for s in counts:
                arms[f"{batch} eager x{s}"] = (arm(module, batch, s, graph=False), batch)
        # the split arms compute the same logits as one stream (same program on the same rows)
        for batch in batches:
            (call1, out1), _ = arms[f"{batch} eager x1"]
            call1()
            one = out1[0].clone()
            for s in counts[1:]:
                (call, outs), _ = arms[f"{batch} eager x{s}"]
                call()
                torch.cuda.synchronize()
                check[f"{batch} eager x{s}"] = float((torch.cat(outs) - one).abs().max())
        result["max_abs_diff_vs_one_stream"] = check
        log(f"split vs one stream, max |diff| of logits: {check}")
        for r in range(args.rounds):
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]
            row = {name: round(seq_per_s(arms[name][0][0], arms[name][1]), 1) for name in names}
            result["rounds"].append(row)
            log(f"round {r}: {row}")
        for name in arms:
            result["medians"][name] = statistics.median(row[name] for row in result["rounds"])
        log(f"medians (seq/s): {result['medians']}")
    finally:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
