"""GPT-2-architecture checkpoints and the decoder module the export traces.

Random seeded checkpoints are right for timing and for the exactness tests (the served engine
must equal Hugging Face ``generate`` of the same checkpoint, whatever its weights). Every
checkpoint folder made here also carries GPT-2's real tokenizer (data/tokenizer_assets.py), so
it loads like any GPT-2 folder.

:func:`decoder_module` wraps ``GPT2LMHeadModel`` as ``forward(input_ids, attention_mask,
position_ids, *past) -> (logits, *presents)``: one graph for prompt steps (past length 0) and
decode steps, tensor names from :mod:`trtserve_contract`.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import trtserve_contract as contract

from ..core.files import building
from ..core.lazy import lazy_import
from ..core.paths import cache_dir
from ..core.stamps import read_json, write_stamp
from ..data.tokenizer_assets import GPT2_EOS_ID, GPT2_TOKENIZER_FILES, GPT2_VOCAB_SIZE, gpt2_tokenizer_folder

torch = lazy_import("torch")
transformers = lazy_import("transformers")

#: Architectures by name: a tiny one for tests (fast on 2 cores) and GPT-2 124M's own shape.
SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_positions=256),
    "small-default": dict(n_layer=4, n_embd=256, n_head=4, n_positions=256),
    "gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
}
#: Beside a random checkpoint: what it was made from.
RANDOM_STAMP = "trtserve_random.json"


def gpt2_config(size: str = "tiny", **overrides):
    """A ``GPT2Config`` of a named size (``overrides`` replace its fields), GPT-2's vocabulary."""
    if size not in SIZES:
        raise KeyError(f"unknown GPT-2 size {size!r}; known: {sorted(SIZES)}")
    return transformers.GPT2Config(vocab_size=GPT2_VOCAB_SIZE, bos_token_id=GPT2_EOS_ID, eos_token_id=GPT2_EOS_ID,
                                   **{**SIZES[size], **overrides})


def gpt2_tokenizer(cache: Path | None = None) -> Path:
    """GPT-2's tokenizer folder, under ``cache`` or the project's cache."""
    return gpt2_tokenizer_folder(Path(cache) if cache is not None else cache_dir())


def copy_tokenizer(folder: Path, cache: Path | None = None) -> None:
    source = gpt2_tokenizer(cache)
    for name in GPT2_TOKENIZER_FILES:
        shutil.copy2(source / name, Path(folder) / name)


def save_checkpoint(model, target: Path, stamp_name: str, stamp: dict, cache: Path | None = None) -> Path:
    """``model`` with GPT-2's tokenizer and ``stamp`` into ``target``, swapped in atomically."""
    target = Path(target)
    with building(target, prefix=f".{target.name}-") as tmp:
        model.generation_config.pad_token_id = GPT2_EOS_ID
        model.save_pretrained(tmp)
        copy_tokenizer(tmp, cache)
        write_stamp(tmp / stamp_name, stamp)
    return target


def random_checkpoint(folder: Path, size: str = "tiny", seed: int = 0, cache: Path | None = None, **overrides) -> Path:
    """A ``GPT2LMHeadModel`` with weights drawn from ``seed`` (cached: a folder made with the same
    settings is returned as is)."""
    stamp = {"size": size, "seed": seed, "overrides": overrides}
    if read_json(Path(folder) / RANDOM_STAMP) == stamp:
        return Path(folder)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(gpt2_config(size, **overrides)).eval()
    return save_checkpoint(model, folder, RANDOM_STAMP, stamp, cache)


def load_decoder(checkpoint: Path):
    """The checkpoint's ``GPT2LMHeadModel`` in eval mode with eager attention (one plain
    MatMul/Softmax path that every runtime and the precision stage understand)."""
    return transformers.GPT2LMHeadModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """(graph inputs, graph outputs) of the decoder with ``layers`` layers of past key/values."""
    inputs = list(contract.DECODER_INPUTS)
    outputs = [contract.LOGITS]
    for i in range(layers):
        inputs += [contract.past_key_name(i), contract.past_value_name(i)]
        outputs += [contract.present_key_name(i), contract.present_value_name(i)]
    return inputs, outputs


@functools.cache
def _decoder_class():
    class DecoderWithPast(torch.nn.Module):
        """``forward(input_ids, attention_mask, position_ids, *past) -> (logits, *presents)``."""

        def __init__(self, model):
            super().__init__()
            self.model = model
            self.layers = model.config.n_layer

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = transformers.DynamicCache()
            for i in range(self.layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True, return_dict=True)
            presents = []
            for i in range(self.layers):
                layer = out.past_key_values.layers[i]
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return DecoderWithPast


def decoder_module(model):
    """``model`` (a ``GPT2LMHeadModel``) as the exported decoder module, in eval mode."""
    return _decoder_class()(model).eval()


def geometry(config) -> dict[str, int]:
    """Layers, heads, head size, positions and vocabulary of a GPT-2 config (what the export records)."""
    return {"layers": int(config.n_layer), "heads": int(config.n_head), "head_dim": int(config.n_embd // config.n_head),
            "context_length": int(config.n_positions), "vocab_size": int(config.vocab_size)}
