"""The per-architecture knowledge agrees with what transformers' models actually take."""
import inspect

import pytest

from trtserve_build.core import architectures as A


def _model_and_config(arch: A.Architecture, size: str = "tiny"):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(arch.model_type, **arch.config_kwargs(1000, 1, size=size))
    return AutoModel._model_mapping[type(config)], config


@pytest.mark.parametrize("name", sorted(A.ARCHITECTURES))
def test_declared_inputs_are_what_the_encoder_uses(name):
    """token_type_ids only where the forward takes them AND the config has more than one type."""
    arch = A.get_architecture(name)
    model_cls, config = _model_and_config(arch)
    params = inspect.signature(model_cls.forward).parameters
    uses_types = "token_type_ids" in params and (getattr(config, "type_vocab_size", 0) or 0) > 1
    assert (A.TOKEN_TYPE_IDS in arch.inputs) == uses_types
    assert arch.inputs[:2] == (A.INPUT_IDS, A.ATTENTION_MASK)
    assert "position_ids" not in arch.inputs  # every encoder computes its own


@pytest.mark.parametrize("name", sorted(n for n, a in A.ARCHITECTURES.items() if a.base_config))
def test_base_sized_configs_are_the_published_shapes(name):
    arch = A.get_architecture(name)
    _, config = _model_and_config(arch, "base")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.vocab_size == {"bert": 30522, "roberta": 50265, "deberta-v2": 128100}[name]


def test_deberta_v3_layout():
    _, config = _model_and_config(A.get_architecture("deberta-v2"))
    assert config.relative_attention and not config.position_biased_input and config.type_vocab_size == 0


def test_unknown_names_are_rejected_with_the_known_ones():
    with pytest.raises(A.UnknownArchitectureError, match="known: \\['bert'"):
        A.get_architecture("gpt2")
    with pytest.raises(A.UnknownArchitectureError, match="'gpt2' is not one of the proven"):
        A.architecture_of("gpt2")
    assert A.architecture_of("xlm-roberta").name == "xlm-roberta"
