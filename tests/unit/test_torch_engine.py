"""The torch backend's serving engine on the CPU: graph planning, padding, chunking, the Triton shim.

CUDA graph capture itself needs a GPU (bench/gpu/ exercises it); here an eager stand-in with the
same static-buffer semantics drives every other line of torch_engine.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trtserve_contract as contract  # noqa: E402
from .fake_pb_utils import Request, Tensor, install  # noqa: E402
from trtserve_backend.torch_engine import (  # noqa: E402
    GraphPlan,
    TorchEncoder,
    TorchEngineError,
    default_graph_batch_sizes,
    eager_graph_factory,
    group_by_length,
    read_metadata,
)

NAMES = contract.ENCODER_INPUTS


class RowModel(torch.nn.Module):
    """A tiny encoder whose rows are independent and depend on every input and on the mask."""

    def __init__(self, vocab: int = 50, hidden: int = 4):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, hidden)
        self.types = torch.nn.Embedding(2, hidden)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.embedding(input_ids) + self.types(token_type_ids)
        m = attention_mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RowModel().eval()


def feeds(rows: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1000 * rows + seq)
    ids = rng.integers(1, 50, (rows, seq))
    mask = np.ones_like(ids)
    for r, n in enumerate(rng.integers(1, seq + 1, rows)):
        mask[r, n:] = 0
    return {contract.INPUT_IDS: ids * mask, contract.ATTENTION_MASK: mask,
            contract.TOKEN_TYPE_IDS: rng.integers(0, 2, (rows, seq)) * mask}


def reference(model, f) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(f[n]) for n in NAMES)).numpy()


# ---- planning ----------------------------------------------------------------------------------

def test_default_graph_batch_sizes():
    assert default_graph_batch_sizes(64, (8, 16, 32, 64)) == (1, 2, 4, 8, 16, 32, 64)
    assert default_graph_batch_sizes(48, (12,)) == (1, 2, 4, 8, 12, 16, 32, 48)
    assert default_graph_batch_sizes(1) == (1,)
    assert default_graph_batch_sizes(8, (100,)) == (1, 2, 4, 8)  # out-of-range preferred sizes ignored
    with pytest.raises(ValueError):
        default_graph_batch_sizes(0)


def test_plan_pads_and_chunks():
    plan = GraphPlan((1, 2, 4, 8, 16, 32, 64), (16, 32, 64, 128))
    assert [plan.padded_batch(n) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert plan.chunks(3) == [(3, 4)]
    assert plan.chunks(64) == [(64, 64)]
    assert plan.chunks(150) == [(64, 64), (64, 64), (22, 32)]
    assert plan.covers(32) and not plan.covers(48)
    with pytest.raises(ValueError):
        plan.padded_batch(65)
    with pytest.raises(ValueError):
        plan.chunks(0)


def test_plan_keys_largest_first():
    keys = GraphPlan((1, 4), (8, 16)).keys()
    assert keys[0] == (4, 16) and set(keys) == {(1, 8), (1, 16), (4, 8), (4, 16)}
    assert [b * s for b, s in keys] == sorted((b * s for b, s in keys), reverse=True)


@pytest.mark.parametrize("batch, seq", [((4, 2), (8,)), ((1, 1), (8,)), ((), (8,)), ((1,), (0, 8))])
def test_plan_rejects_bad_sizes(batch, seq):
    with pytest.raises(ValueError, match="strictly increasing"):
        GraphPlan(batch, seq)


def test_group_by_length():
    reqs = [feeds(1, 8), feeds(2, 16), feeds(3, 8)]
    assert group_by_length(reqs, contract.INPUT_IDS) == {8: [0, 2], 16: [1]}


# ---- running -----------------------------------------------------------------------------------

def test_eager_engine_matches_the_module(model):
    engine = TorchEncoder(model, NAMES, "cpu", plan=None)
    assert engine.capture() == 0.0 and engine.graph_shapes == []
    f = feeds(5, 12)
    np.testing.assert_allclose(engine.run(f).numpy(), reference(model, f), rtol=1e-6)


@pytest.fixture
def graphed(model):
    engine = TorchEncoder(model, NAMES, "cpu", GraphPlan((1, 2, 4, 8), (8, 16)), graph_factory=eager_graph_factory)
    engine.capture()
    assert engine.graph_shapes == [(b, s) for b in (1, 2, 4, 8) for s in (8, 16)]
    return engine


@pytest.mark.parametrize("rows, seq", [(1, 8), (3, 8), (4, 16), (7, 16), (8, 8), (19, 16), (2, 12)])
def test_padded_chunked_and_uncovered_shapes_match(graphed, model, rows, seq):
    """Padding up to a captured batch, chunking past the largest, eager for lengths without a graph."""
    f = feeds(rows, seq)
    out = graphed.run(f)
    assert out.shape == (rows, 4)
    np.testing.assert_allclose(out.numpy(), reference(model, f), rtol=1e-6)


def test_stale_rows_and_reused_outputs_do_not_leak(graphed, model):
    big, small = feeds(4, 8, seed=1), feeds(3, 8, seed=2)
    first = graphed.run(big)
    kept = first.clone()
    second = graphed.run(small)  # same graph (padded to 4): its 4th row still holds `big`'s data
    np.testing.assert_allclose(second.numpy(), reference(model, small), rtol=1e-6)
    assert torch.equal(first, kept), "an earlier result changed when the graph replayed"


@pytest.mark.parametrize("merge", ["pad", "group"])
def test_run_requests_of_mixed_lengths_keep_order_and_results(graphed, model, merge):
    """Padding every request to the longest (one batch) or grouping by length: same rows out."""
    reqs = [feeds(1, 8, 1), feeds(2, 16, 2), feeds(3, 8, 3), feeds(1, 16, 4)]
    outs = graphed.run_requests(reqs, to_host=True, merge=merge)
    assert [o.shape[0] for o in outs] == [1, 2, 3, 1]
    for f, out in zip(reqs, outs):
        assert out.device.type == "cpu"
        np.testing.assert_allclose(out.numpy(), reference(model, f), rtol=1e-6, atol=1e-7)


def test_pad_merge_runs_one_batch(model):
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, *inputs):
            calls.append(tuple(inputs[0].shape))
            return model(*inputs)

    engine = TorchEncoder(Counting(), NAMES, "cpu")
    engine.run_requests([feeds(1, 8), feeds(2, 16), feeds(3, 8)], merge="pad")
    assert calls == [(6, 16)]
    calls.clear()
    engine.run_requests([feeds(1, 8), feeds(2, 16), feeds(3, 8)], merge="group")
    assert sorted(calls) == [(2, 16), (4, 8)]
    with pytest.raises(ValueError, match="merge"):
        engine.run_requests([feeds(1, 8)], merge="sorted")


def test_torch_tensor_inputs_are_accepted(graphed, model):
    f = feeds(2, 16)
    out = graphed.run({n: torch.from_numpy(v) for n, v in f.items()})
    np.testing.assert_allclose(out.numpy(), reference(model, f), rtol=1e-6)


def test_cuda_graphs_need_cuda(model):
    engine = TorchEncoder(model, NAMES, "cpu", GraphPlan((1,), (8,)))
    with pytest.raises(TorchEngineError, match="CUDA graphs need a CUDA device"):
        engine.capture()


# ---- files made by the build stage -------------------------------------------------------------

def _save_traced(model, path, **metadata):
    example = tuple(torch.from_numpy(feeds(2, 8)[n]) for n in NAMES)
    traced = torch.jit.trace(model, example)
    meta = {"inputs": list(NAMES), "target_device_type": "cpu", **metadata}
    torch.jit.save(traced, str(path), _extra_files={"trtserve.json": json.dumps(meta)})
    return meta


def test_from_file_reads_metadata_and_runs(model, tmp_path):
    meta = _save_traced(model, tmp_path / "model.pt", precision="fp32")
    engine = TorchEncoder.from_file(str(tmp_path / "model.pt"), NAMES, "cpu")
    assert engine.metadata == meta == read_metadata(str(tmp_path / "model.pt"))
    f = feeds(3, 16)
    np.testing.assert_allclose(engine.run(f).numpy(), reference(model, f), rtol=1e-6)


def test_from_file_refuses_another_device_type_or_other_inputs(model, tmp_path):
    _save_traced(model, tmp_path / "cuda.pt", target_device_type="cuda")
    with pytest.raises(TorchEngineError, match="traced for 'cuda' devices"):
        TorchEncoder.from_file(str(tmp_path / "cuda.pt"), NAMES, "cpu")
    _save_traced(model, tmp_path / "two.pt", inputs=[contract.INPUT_IDS, contract.ATTENTION_MASK])
    with pytest.raises(TorchEngineError, match="takes inputs"):
        TorchEncoder.from_file(str(tmp_path / "two.pt"), NAMES, "cpu")


# ---- the Triton Python model, with a stand-in for triton_python_backend_utils -------------------

@pytest.fixture
def fake_pb_utils(monkeypatch):
    return install(monkeypatch, "trtserve_backend.triton_models.torch_encoder")


def test_triton_model_serves_from_the_generated_config(fake_pb_utils, model, tmp_path, embed_spec):
    from google.protobuf import json_format

    from trtserve_build.core.paths import TORCHSCRIPT_FILE
    from trtserve_build.stages.triton_config import encoder_config

    from .test_triton_config import manifest_for, with_engine

    # the traced HF modules (embed's own gpu_torch engine is the fused encoder: test_fused_engine.py)
    spec = with_engine(embed_spec, "gpu_torch", engine_format="torchscript")
    config = encoder_config(spec, manifest_for(spec, hidden=4), "gpu_torch")  # pooled [4] FP32
    (tmp_path / "1").mkdir()
    _save_traced(model, tmp_path / "1" / TORCHSCRIPT_FILE)
    args = {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(tmp_path), "model_version": "1",
            "model_instance_kind": "CPU", "model_instance_device_id": "0"}

    from trtserve_backend.triton_models.torch_encoder import TritonPythonModel

    served = TritonPythonModel()
    served.initialize(args)
    requests = [feeds(2, 16, 1), feeds(1, 32, 2), feeds(3, 16, 3)]
    responses = served.execute([Request(Tensor(n, f[n]) for n in NAMES) for f in requests])
    for f, response in zip(requests, responses):
        (tensor,) = response.output_tensors
        assert tensor.name() == contract.POOLED and tensor.as_numpy().dtype == np.float32
        np.testing.assert_allclose(tensor.as_numpy(), reference(model, f), rtol=1e-6)
    broken = served.execute([Request([Tensor(contract.INPUT_IDS, feeds(1, 16)[contract.INPUT_IDS])])])
    assert "lacks input 'attention_mask'" in broken[0].error.message


def test_the_gpu_wait_spins_by_default_and_blocks_for_the_ab(model, monkeypatch):
    """The device-to-host copy's own spin-wait is the default (it measured faster on an H200 than a
    blocking CUDA event); TRTSERVE_CUDA_SYNC=blocking is the A/B's other arm. On the CPU there is
    nothing to wait for and no event is made."""
    monkeypatch.delenv("TRTSERVE_CUDA_SYNC", raising=False)
    assert not TorchEncoder(model, NAMES, "cpu").blocking_sync
    monkeypatch.setenv("TRTSERVE_CUDA_SYNC", "blocking")
    engine = TorchEncoder(model, NAMES, "cpu")
    assert engine.blocking_sync
    engine.run_requests([feeds(2, 16, 1)], to_host=True)
    assert engine._done is None
