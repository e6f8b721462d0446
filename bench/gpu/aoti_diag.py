"""Where the AOTInductor fused encoder crashes on the GPU (session 7 diagnostic): one variant per
process, faulthandler on, a line per stage (export, compile, load, run, graph capture)."""
import faulthandler, os, sys, time
from pathlib import Path
faulthandler.enable()
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / d) for d in ("build", "serve", "contract")]
import torch
from trtserve_build.models.fused import fused_encoder
from trtserve_build.models.loader import random_task_model
from trtserve_build.stages.compiled import compile_package
from trtserve_backend.programs import load_package

gelu, full, stage_load, single = sys.argv[1], sys.argv[2] == "full", sys.argv[3], sys.argv[4] == "1"
out = Path(sys.argv[5])
t0 = time.time()
def log(m): print(f"[diag {gelu} {'full' if full else 'masked'} +{time.time()-t0:.0f}s] {m}", flush=True)
model = random_task_model(ROOT / ".device/data/sentiment_config.json", "classification", seed=0).cuda()
names = ("input_ids", "attention_mask", "token_type_ids")
ids = torch.randint(1000, 30000, (4, 32), device="cuda"); mask = torch.ones_like(ids); mask[1, 20:] = 0
ex = (ids, mask, torch.zeros_like(ids))
m = fused_encoder(model, "classification", names, "fp16", full_rows=full, gelu=gelu).cuda()
with torch.no_grad(): eager = m(*ex)
log(f"eager ok {tuple(eager.shape)}")
if stage_load != "loadonly":
    compile_package(m, ex, 64, 128, out); log(f"compiled {out} {out.stat().st_size/1e6:.1f} MB")
if stage_load == "compileonly":
    sys.exit(0)
run = load_package(str(out), "cuda") if single else torch._inductor.aoti_load_package(str(out))
log("loaded")
with torch.no_grad(): got = run(*ex)
torch.cuda.synchronize(); log(f"ran: max diff {(got.float()-eager.float()).abs().max().item():.2e}")
with torch.no_grad(): got1 = run(*(t[:1, :7] for t in ex))
torch.cuda.synchronize(); log(f"ran 1x7 {tuple(got1.shape)}")
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s), torch.no_grad():
    for _ in range(2): run(*ex)
torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g), torch.no_grad(): o = run(*ex)
g.replay(); torch.cuda.synchronize(); log(f"graph ok diff {(o.float()-eager.float()).abs().max().item():.2e}")
for b in (256,):
    x = tuple(t.repeat(64, 4)[:b, :128].contiguous() for t in ex)
    for _ in range(3): run(*x)
    torch.cuda.synchronize(); st = time.time()
    for _ in range(20): run(*x)
    torch.cuda.synchronize(); log(f"{b}x128 eager-call {((time.time()-st)/20)*1e3:.2f} ms")
