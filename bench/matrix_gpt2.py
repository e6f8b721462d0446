"""`make bench-matrix`: GPT-2 124M (issue 11), random seeded weights, the prompt (context) phase.

A point is the full forward pass over the sequence, as a served prompt step computes it:
``input_ids`` [batch, seq] with its attention mask and positions, no past, to logits
[batch, seq, 50257] and every layer's key/values. PyTorch runs ``GPT2LMHeadModel`` (its default
attention); ONNX Runtime runs issue 11's decoder export (one graph with past key/values, fed pasts
of length 0, eager attention) and the precision stage's fp16/hybrid/int8 graphs of it, int8
calibrated on the spec's review texts tokenized by GPT-2's tokenizer. Timing depends on shapes
only, so the weights are random (seed 0) and nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import trtserve_contract as contract
from trtserve_build.core.lazy import lazy_import
from trtserve_build.core.paths import cache_dir, export_dir, precision_onnx_path
from trtserve_build.core.spec import parse_spec
from trtserve_build.data.tokenizer_assets import GPT2_EOS_ID, gpt2_tokenizer_folder
from trtserve_build.stages import calibrate as calibrate_stage
from trtserve_build.stages import precision as precision_stage

torch = lazy_import("torch")
transformers = lazy_import("transformers")

MODEL = "gpt2"
BENCH_SIZE = "gpt2-124m"  # n_layer 12, n_embd 768, n_head 12, vocab 50257 (trtserve_build.models.gpt2.SIZES)
#: The size the functions below use (read at call time; the unit tests set "tiny").
SIZE = BENCH_SIZE
SEED = 0
SPEC_NAME = "bench_gpt2"
EXPORT_STAMP = "bench_export.json"
#: Calibration texts are cut to this many GPT-2 tokens (reviews are shorter).
CALIBRATION_TOKENS = 128


def gpt2_build() -> SimpleNamespace:
    """Issue 11's GPT-2 build pieces, imported in this one place: ``sizes`` (name -> config
    overrides), ``config(size)``, ``random_checkpoint(folder, size, seed)`` and
    ``export_onnx(checkpoint, out_dir) -> ONNX path`` (checked against PyTorch; raises past its
    tolerance)."""
    from trtserve_build.models.gpt2 import SIZES, gpt2_config, random_checkpoint
    from trtserve_build.stages.decoder_export import export_decoder_onnx

    return SimpleNamespace(sizes=SIZES, config=gpt2_config, random_checkpoint=random_checkpoint,
                           export_onnx=lambda checkpoint, out_dir: export_decoder_onnx(checkpoint, out_dir)[0])


def gpt2_config():
    """GPT-2's config at :data:`SIZE` (no weights)."""
    return gpt2_build().config(SIZE)


def geometry() -> tuple[int, int, int]:
    """(layers, heads, head size) at :data:`SIZE`, without importing transformers (the timed
    child process takes its memory baseline before the model is loaded)."""
    size = gpt2_build().sizes[SIZE]
    return int(size["n_layer"]), int(size["n_head"]), int(size["n_embd"] // size["n_head"])


def torch_module():
    """``forward(input_ids, attention_mask, position_ids) -> (logits, key/values)``: the prompt
    step of ``GPT2LMHeadModel`` with seed-``SEED`` weights (the ones the export's checkpoint holds)."""
    torch.manual_seed(SEED)
    lm = transformers.GPT2LMHeadModel(gpt2_config()).eval()

    class PromptStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True, return_dict=True)
            return out.logits, out.past_key_values

    return PromptStep().eval()


def attention_note(module) -> str:
    return f"{module.lm.config._attn_implementation} attention"


def rows(stream: np.ndarray, batch: int, seq: int) -> np.ndarray:
    """[batch, seq] rows of consecutive tokens of ``stream`` (no padding)."""
    ids = np.empty((batch, seq), dtype=np.int64)
    for b in range(batch):
        start = (b * seq) % max(1, len(stream) - seq)
        ids[b] = stream[start:start + seq]
    return ids


def feeds(ids: np.ndarray, layers: int, heads: int, head_dim: int) -> dict[str, np.ndarray]:
    """The prompt step's inputs for ``ids`` [batch, seq]: all positions attended, positions
    0..seq-1, and every layer's past key/values of length 0 (FP32)."""
    batch, seq = ids.shape
    out = {contract.INPUT_IDS: ids.astype(np.int64), contract.ATTENTION_MASK: np.ones((batch, seq), np.int64),
           contract.POSITION_IDS: np.tile(np.arange(seq, dtype=np.int64), (batch, 1))}
    empty = np.zeros((batch, heads, 0, head_dim), np.float32)
    for i in range(layers):
        out[contract.past_key_name(i)] = empty
        out[contract.past_value_name(i)] = empty
    return out


def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(gpt2_tokenizer_folder(cache_dir())))


def spec_and_checkpoint():
    """A deployment spec whose name is the export folder and whose ``[precision]`` section (the
    defaults: calibration on the review texts' training split) the precision and calibration
    stages read; its task and engine sections are not used on this path."""
    name = SPEC_NAME if SIZE == BENCH_SIZE else f"{SPEC_NAME}_{SIZE.replace('-', '_')}"
    ckpt = cache_dir() / "checkpoints" / name
    return parse_spec({
        "name": name,
        "task": "embedding",
        "model": {"checkpoint": str(ckpt), "max_sequence_length": 512, "length_buckets": [32, 64, 128, 256, 512]},
        "engine": {"cpu": {"backend": "onnxruntime"}},
    }), ckpt


def export_onnx(spec, ckpt: Path) -> Path:
    """The FP32 decoder export of the seeded checkpoint in the spec's export folder (cached: kept
    while this module's stamp names the same checkpoint, size and seed and the graph is newer than
    the weights; the stamp is written after a successful, checked export)."""
    build = gpt2_build()
    build.random_checkpoint(ckpt, SIZE, SEED)
    out = export_dir(spec)
    path, stamp = out / "model.onnx", out / EXPORT_STAMP
    want = {"checkpoint": str(ckpt), "size": SIZE, "seed": SEED}
    weights = max(ckpt.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, default=None)
    if (path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want
            and weights is not None and path.stat().st_mtime > weights.stat().st_mtime):
        return path
    stamp.unlink(missing_ok=True)
    path = build.export_onnx(ckpt, out)
    stamp.write_text(json.dumps(want) + "\n")
    return path


def encoder(tok, layers: int, heads: int, head_dim: int, max_tokens: int = CALIBRATION_TOKENS):
    """``encode(texts) -> feeds`` for calibration: GPT-2 tokens, right-padded with EOS (mask 0)."""
    def encode(texts):
        tokens = [ids[:max_tokens] for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
        ids = np.full((len(tokens), max(1, max(map(len, tokens)))), GPT2_EOS_ID, np.int64)
        mask = np.zeros_like(ids)
        for i, t in enumerate(tokens):
            ids[i, :len(t)], mask[i, :len(t)] = t, 1
        out = feeds(ids, layers, heads, head_dim)
        out[contract.ATTENTION_MASK] = mask
        return out

    return encode


def onnx_graph(precision: str) -> Path:
    """GPT-2's graph at ``precision`` through the precision stage (fp32: the export itself)."""
    spec, ckpt = spec_and_checkpoint()
    export_onnx(spec, ckpt)
    layers, heads, head_dim = geometry()

    def calibrate(model, source_sha: str):
        encode = encoder(tokenizer(), layers, heads, head_dim)
        return calibrate_stage.calibrate_spec(spec, model, source_sha, export_dir(spec), encode)

    return precision_stage.ensure_precision_onnx(spec, precision, calibrate=calibrate)


def prepared_graph(precision: str) -> Path:
    """The graph :func:`onnx_graph` made, without exporting anything."""
    return precision_onnx_path(spec_and_checkpoint()[0], precision)


def token_stream(min_tokens: int) -> np.ndarray:
    """GPT-2 token ids of the review corpus, at least ``min_tokens`` long (raises if not there)."""
    from trtserve_build.data.datasets import corpus_texts

    texts = corpus_texts(limit=4000)  # first: where the corpus cannot be had, no tokenizer fetch is tried
    ids: list[int] = []
    for row in tokenizer()(texts, add_special_tokens=False)["input_ids"]:
        ids += row + [GPT2_EOS_ID]
        if len(ids) >= min_tokens:
            return np.asarray(ids, dtype=np.int64)
    raise ValueError(f"{len(ids)} GPT-2 tokens of review text, {min_tokens} needed")
