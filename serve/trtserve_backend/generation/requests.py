"""A ``generate`` request: read from the request's tensors, checked against the deployment's limits.

Bad input raises :class:`GenerationInputError` (answered INVALID_ARG, naming the problem); a
full server raises :class:`CapacityError` (UNAVAILABLE: try again later).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

import trtserve_contract as contract
from ..tokenize import InvalidTextError, decode_texts
from .sampling import SamplingError, SamplingParams


class GenerationInputError(ValueError):
    """A request the model cannot serve as sent; the message says which input and why."""


class CapacityError(RuntimeError):
    """The server holds as many sequences as it may; the request was not admitted."""


@dataclass(frozen=True)
class GenerationLimits:
    """Limits of one deployment (from the spec, through the model config's parameters)."""

    context_length: int  # the model's position table (n_positions)
    max_prompt_tokens: int
    max_new_tokens: int  # the most a request may ask for
    default_max_new_tokens: int
    max_sequences: int  # decoding and waiting together; beyond it requests are refused
    max_stop_strings: int = 4
    max_stop_chars: int = 64

    def __post_init__(self) -> None:
        for name in ("context_length", "max_prompt_tokens", "max_new_tokens", "default_max_new_tokens", "max_sequences"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_tokens + self.max_new_tokens > self.context_length:
            raise ValueError(
                f"max_prompt_tokens {self.max_prompt_tokens} + max_new_tokens {self.max_new_tokens} exceed the "
                f"model's context of {self.context_length} positions"
            )
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(f"default_max_new_tokens {self.default_max_new_tokens} > max_new_tokens {self.max_new_tokens}")

    #: The limits a deployment sets (GenerateParameters has a field of each name).
    DEPLOYMENT_FIELDS = ("context_length", "max_prompt_tokens", "max_new_tokens", "default_max_new_tokens",
                         "max_sequences")

    @classmethod
    def from_parameters(cls, params) -> "GenerationLimits":
        """From the model's :class:`~trtserve_backend.parameters.GenerateParameters`."""
        return cls(**{name: int(getattr(params, name)) for name in cls.DEPLOYMENT_FIELDS})

    def parameters(self) -> dict[str, int]:
        """The limits a deployment sets, as GenerateParameters fields."""
        return {name: getattr(self, name) for name in self.DEPLOYMENT_FIELDS}


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stops: tuple[str, ...] = ()


def _scalar(arrays: Mapping[str, np.ndarray], name: str, kind: type, default):
    if name not in arrays:
        return default
    values = np.asarray(arrays[name]).reshape(-1)
    if values.size != 1:
        raise GenerationInputError(f"{name} must hold one value per request, got {values.size}")
    value = values[0]
    if kind is int:
        if not np.issubdtype(values.dtype, np.integer):
            raise GenerationInputError(f"{name} must be an integer, got {values.dtype}")
        return int(value)
    return float(value)


def parse_request(
    arrays: Mapping[str, np.ndarray], encode: Callable[[str], list[int]], limits: GenerationLimits, bos_id: int
) -> GenerationRequest:
    """Read PROMPT and the optional settings; raise GenerationInputError with a clear message.

    An empty prompt starts from ``bos_id`` (GPT-2's ``<|endoftext|>``), as a sequence must hold
    at least one token.
    """
    if contract.PROMPT not in arrays:
        raise GenerationInputError(f"request lacks input '{contract.PROMPT}'")
    try:
        prompts = decode_texts(np.asarray(arrays[contract.PROMPT]), contract.PROMPT)
        stops = tuple(decode_texts(np.asarray(arrays[contract.STOP]), contract.STOP)) if contract.STOP in arrays else ()
    except InvalidTextError as e:
        raise GenerationInputError(str(e)) from None
    if len(prompts) != 1:
        raise GenerationInputError(f"{contract.PROMPT} must hold one prompt per request, got {len(prompts)}")
    if len(stops) > limits.max_stop_strings or any(len(s) > limits.max_stop_chars for s in stops):
        raise GenerationInputError(
            f"{contract.STOP}: at most {limits.max_stop_strings} strings of at most {limits.max_stop_chars} characters")
    ids = encode(prompts[0]) or [bos_id]
    if len(ids) > limits.max_prompt_tokens:
        raise GenerationInputError(
            f"{contract.PROMPT} is {len(ids)} tokens long; this model accepts at most {limits.max_prompt_tokens}")
    max_new = _scalar(arrays, contract.MAX_NEW_TOKENS, int, limits.default_max_new_tokens)
    if not 1 <= max_new <= limits.max_new_tokens:
        raise GenerationInputError(
            f"{contract.MAX_NEW_TOKENS} must be in 1..{limits.max_new_tokens}, got {max_new}")
    try:
        sampling = SamplingParams(
            temperature=_scalar(arrays, contract.TEMPERATURE, float, 0.0),
            top_p=_scalar(arrays, contract.TOP_P, float, 1.0),
            seed=_scalar(arrays, contract.SEED, int, None),
        )
    except SamplingError as e:
        raise GenerationInputError(str(e)) from None
    return GenerationRequest(prompt_ids=ids, max_new_tokens=max_new, sampling=sampling, stops=stops)
