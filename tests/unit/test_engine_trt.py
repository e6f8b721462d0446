"""The TensorRT engine stage, built for real with TensorRT-RTX on a tiny ONNX encoder."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import trtserve_contract as contract  # noqa: E402
from trtserve_build import cli  # noqa: E402
from trtserve_build.core import host  # noqa: E402
from trtserve_build.core.errors import EngineBuildError, TensorRTUnavailableError  # noqa: E402
from trtserve_build.core.paths import record_path  # noqa: E402
from trtserve_build.core.records import EngineRecord  # noqa: E402
from trtserve_build.core.spec import parse_spec  # noqa: E402
from trtserve_build.runtime import tensorrt as trt_runtime  # noqa: E402
from trtserve_build.runtime.tensorrt import detect_tensorrt  # noqa: E402
from trtserve_build.stages import tensorrt as engine_trt  # noqa: E402
from trtserve_build.stages.tensorrt import (  # noqa: E402
    Profile,
    build_plan,
    is_plan_current,
    profiles_from_spec,
)

HIDDEN = 8
VOCAB = 100


def make_spec(**batching):
    return parse_spec(
        {
            "name": "tiny",
            "task": "embedding",
            "model": {"checkpoint": "/nonexistent", "max_sequence_length": 64, "length_buckets": [8, 16, 32, 64]},
            "batching": {"max_batch_size": 8, "optimal_batch_size": 4, **batching},
            "engine": {"gpu": {"backend": "tensorrt", "precision": "fp32"}},
        }
    )


def tiny_encoder(path, *, inputs=contract.ENCODER_INPUTS, extra_node=None):
    """Gather embedding, masked by attention_mask (+ token_type_ids), mean over seq."""
    rng = np.random.default_rng(0)
    value_infos = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in inputs]
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", contract.INPUT_IDS], ["hidden"], axis=0),
        helper.make_node("Cast", [contract.ATTENTION_MASK], ["mask"], to=TensorProto.FLOAT),
    ]
    mask = "mask"
    if contract.TOKEN_TYPE_IDS in inputs:
        nodes += [
            helper.make_node("Cast", [contract.TOKEN_TYPE_IDS], ["types"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["mask", "types"], ["mask_types"]),
        ]
        mask = "mask_types"
    nodes += [
        helper.make_node("Unsqueeze", [mask, "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceMean", ["masked"], [contract.POOLED], axes=[1], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info(contract.POOLED, TensorProto.FLOAT, ["batch", HIDDEN])]
    if extra_node is not None:
        nodes.append(extra_node)
        outputs.append(helper.make_tensor_value_info(extra_node.output[0], TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "tiny_encoder", value_infos, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    if extra_node is None:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def rtx():
    pytest.importorskip("tensorrt_rtx")
    return trt_runtime.import_flavour("tensorrt_rtx")


@pytest.fixture(scope="module")
def built(tmp_path_factory, rtx):
    d = tmp_path_factory.mktemp("engine")
    onnx_path = tiny_encoder(d / "tiny.onnx")
    plan = d / "out" / "tiny.plan"
    record = build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx, workspace_gb=0.25)
    return onnx_path, plan, record


def test_profile_from_spec():
    (p,) = profiles_from_spec(make_spec())
    # min: one request at the shortest bucket; opt: optimal batch at the (lower) median
    # bucket of [8, 16, 32, 64]; max: the largest batch at the longest sequence.
    assert p == Profile(min=(1, 8), opt=(4, 16), max=(8, 64))
    assert p.shapes() == {"min": [1, 8], "opt": [4, 16], "max": [8, 64]}


def test_profile_from_embed_spec():
    from trtserve_build.core.spec import load_spec

    (p,) = profiles_from_spec(load_spec("deployments/embed.toml"))
    assert p == Profile(min=(1, 16), opt=(16, 64), max=(64, 256))


def test_build_plan_writes_plan_and_record(built, rtx):
    onnx_path, plan, record = built
    data = plan.read_bytes()
    assert len(data) > 0
    assert record.plan_bytes == len(data)
    assert record.plan_sha256 == hashlib.sha256(data).hexdigest()
    assert record.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert record.tensorrt_flavour == "tensorrt_rtx"
    assert record.tensorrt_version == rtx.version == rtx.module.__version__
    assert record.precision == "fp32"
    assert record.strongly_typed is True
    assert record.tf32 is False  # cleared for fp32
    assert record.compute_capability_source == "tensorrt_rtx default"
    assert record.compute_capabilities == list(engine_trt.RTX_DEFAULT_COMPUTE_CAPABILITIES)
    assert record.triton_loadable is False
    assert record.inputs == list(contract.ENCODER_INPUTS)
    assert record.outputs == [contract.POOLED]
    shapes = {"min": [1, 8], "opt": [4, 16], "max": [8, 64]}
    assert record.profiles == [{name: shapes for name in contract.ENCODER_INPUTS}]
    assert record.build_seconds > 0 and record.hostname and record.created_utc
    assert record.spec_name == "tiny"
    # No temp files left behind by the atomic writes.
    assert sorted(p.name for p in plan.parent.iterdir()) == ["tiny.plan", "tiny.plan.json"]


def test_record_round_trips(built):
    _, plan, record = built
    on_disk = EngineRecord.load(record_path(plan))
    assert on_disk == record
    assert EngineRecord.from_json(record.to_json()) == record
    assert json.loads(record_path(plan).read_text())["plan_sha256"] == record.plan_sha256
    with pytest.raises(ValueError):
        EngineRecord.from_json('{"precision": "fp32"}')


def test_plan_deserializes_with_profile(built, rtx):
    """The plan is a real engine: the runtime reads it back with the profile we set."""
    _, plan, _ = built
    trt = rtx.module
    runtime = trt.Runtime(engine_trt.capturing_logger(rtx))
    try:
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    except Exception:  # noqa: BLE001 - needs a CUDA device on some versions
        engine = None
    if engine is None:
        pytest.skip("this machine cannot deserialize TensorRT-RTX engines (no GPU)")
    for name in contract.ENCODER_INPUTS:
        assert [list(s) for s in engine.get_tensor_profile_shape(name, 0)] == [[1, 8], [4, 16], [8, 64]]


def test_is_plan_current(built, rtx, tmp_path):
    onnx_path, plan, _ = built
    assert is_plan_current(plan, onnx_path, "fp32", rtx)
    assert is_plan_current(plan, onnx_path, "fp32", rtx, spec=make_spec())
    assert not is_plan_current(plan, onnx_path, "fp16", rtx)
    assert not is_plan_current(plan, onnx_path, "fp32", rtx, spec=make_spec(max_batch_size=16))
    other = trt_runtime.TensorRTFlavour(module=rtx.module, name="tensorrt_rtx", version="0.0.0")
    assert not is_plan_current(plan, onnx_path, "fp32", other)
    changed = tiny_encoder(tmp_path / "changed.onnx", inputs=(contract.INPUT_IDS, contract.ATTENTION_MASK))
    assert not is_plan_current(plan, changed, "fp32", rtx)
    assert not is_plan_current(tmp_path / "missing.plan", onnx_path, "fp32", rtx)


def _as_full_tensorrt_plan(tmp_path, rtx, compute_capabilities):
    """A plan + record as full TensorRT would have written them (built here by TensorRT-RTX)."""
    onnx_path = tiny_encoder(tmp_path / "tiny.onnx")
    plan = tmp_path / "full.plan"
    build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx, workspace_gb=0.25)
    record = EngineRecord.load(record_path(plan))
    record.tensorrt_flavour, record.compute_capabilities = "tensorrt", compute_capabilities
    record_path(plan).write_text(record.to_json())
    full = trt_runtime.TensorRTFlavour(module=rtx.module, name="tensorrt", version=rtx.version)
    return onnx_path, plan, full


def _nvidia_smi_says(tmp_path, monkeypatch, output: str, status: int = 0) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '{output}'\nexit {status}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_full_tensorrt_plan_is_current_only_on_its_gpu(tmp_path, rtx, monkeypatch):
    """Full TensorRT plans run only on the architecture they were built for: the capability comes
    from nvidia-smi (no torch needed), and an unknown one never counts as current."""
    onnx_path, plan, full = _as_full_tensorrt_plan(tmp_path, rtx, ["9.0"])
    _nvidia_smi_says(tmp_path, monkeypatch, "9.0\\n")
    assert is_plan_current(plan, onnx_path, "fp32", full)
    _nvidia_smi_says(tmp_path, monkeypatch, "8.6\\n")
    assert not is_plan_current(plan, onnx_path, "fp32", full)
    _nvidia_smi_says(tmp_path, monkeypatch, "No devices were found\\n", status=6)
    if host.gpu_compute_capability()[0] == host.UNKNOWN:  # no GPU here (torch cannot tell either)
        assert not is_plan_current(plan, onnx_path, "fp32", full)
    onnx_path, plan, full = _as_full_tensorrt_plan(tmp_path, rtx, ["unknown"])
    _nvidia_smi_says(tmp_path, monkeypatch, "9.0\\n")
    assert not is_plan_current(plan, onnx_path, "fp32", full)


def test_is_plan_current_detects_replaced_plan(tmp_path, rtx):
    onnx_path = tiny_encoder(tmp_path / "tiny.onnx")
    plan = tmp_path / "tiny.plan"
    build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx, workspace_gb=0.25)
    data = bytearray(plan.read_bytes())
    data[-1] ^= 0xFF
    plan.write_bytes(bytes(data))
    assert not is_plan_current(plan, onnx_path, "fp32", rtx)


def test_rtx_explicit_compute_capabilities(tmp_path, rtx):
    onnx_path = tiny_encoder(tmp_path / "tiny.onnx")
    plan = tmp_path / "sm86.plan"
    record = build_plan(
        onnx_path, plan, make_spec(), "fp32", flavour=rtx, workspace_gb=0.25, compute_capabilities=["8.6", "SM120"]
    )
    assert plan.stat().st_size > 0
    assert (record.compute_capabilities, record.compute_capability_source) == (["8.6", "SM120"], "explicit")
    assert is_plan_current(plan, onnx_path, "fp32", rtx, compute_capabilities=["8.6", "SM120"])
    assert not is_plan_current(plan, onnx_path, "fp32", rtx)  # the default set is wanted: rebuild
    with pytest.raises(ValueError, match="9.0"):  # Hopper: not a TensorRT-RTX target
        build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx, compute_capabilities=["9.0"])


def test_only_inputs_present_in_graph_get_profiles(tmp_path, rtx):
    onnx_path = tiny_encoder(tmp_path / "two.onnx", inputs=(contract.INPUT_IDS, contract.ATTENTION_MASK))
    record = build_plan(onnx_path, tmp_path / "two.plan", make_spec(), "fp32", flavour=rtx, workspace_gb=0.25)
    assert record.inputs == [contract.INPUT_IDS, contract.ATTENTION_MASK]
    assert set(record.profiles[0]) == {contract.INPUT_IDS, contract.ATTENTION_MASK}


def test_unsupported_node_raises_with_parser_message(tmp_path, rtx):
    bad = helper.make_node("NoSuchOpAnywhere", [contract.POOLED], ["extra"])
    onnx_path = tiny_encoder(tmp_path / "bad.onnx", extra_node=bad)
    plan = tmp_path / "bad.plan"
    with pytest.raises(EngineBuildError) as err:
        build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx)
    msg = str(err.value)
    assert "NoSuchOpAnywhere" in msg and "INVALID_NODE" in msg and "1 error(s)" in msg
    assert not plan.exists() and not record_path(plan).exists()


def test_build_failure_raises_with_builder_message(tmp_path, rtx):
    """Parses fine, but no shape in the profile can satisfy Reshape([3, -1]) of [batch, 8]."""
    reshape = helper.make_node("Reshape", [contract.POOLED, "bad_shape"], ["reshaped"])
    onnx_path = tiny_encoder(tmp_path / "reshape.onnx", extra_node=reshape)
    model = onnx.load(str(onnx_path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([3, -1], np.int64), "bad_shape"))
    onnx.save(model, str(onnx_path))
    plan = tmp_path / "reshape.plan"
    with pytest.raises(EngineBuildError, match="could not build") as err:
        build_plan(onnx_path, plan, make_spec(), "fp32", flavour=rtx)
    assert "node_of_reshaped" in str(err.value) and "[8, 64]" in str(err.value)
    assert not plan.exists()


def test_not_an_onnx_file_raises(tmp_path, rtx):
    onnx_path = tmp_path / "garbage.onnx"
    onnx_path.write_bytes(b"this is not a protobuf")
    # TensorRT's parser may reject the bytes or decode them as an empty model: both must fail.
    with pytest.raises(EngineBuildError, match="ONNX parser"):
        build_plan(onnx_path, tmp_path / "garbage.plan", make_spec(), "fp32", flavour=rtx)


def test_unknown_precision_and_missing_file(tmp_path, rtx):
    with pytest.raises(ValueError, match="precision"):
        build_plan(tmp_path / "x.onnx", tmp_path / "x.plan", make_spec(), "fp64", flavour=rtx)
    with pytest.raises(FileNotFoundError):
        build_plan(tmp_path / "x.onnx", tmp_path / "x.plan", make_spec(), "fp32", flavour=rtx)


def test_forced_flavour(monkeypatch, rtx):
    monkeypatch.setenv(trt_runtime.FLAVOUR_ENV, "tensorrt_rtx")
    f = detect_tensorrt()
    assert (f.name, f.version) == ("tensorrt_rtx", rtx.version)


def test_unknown_forced_flavour_raises(monkeypatch):
    monkeypatch.setenv(trt_runtime.FLAVOUR_ENV, "tensorrt_lean")
    with pytest.raises(TensorRTUnavailableError, match="TRTSERVE_TENSORRT"):
        detect_tensorrt()


def test_unavailable_flavour_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    monkeypatch.setenv(trt_runtime.FLAVOUR_ENV, "tensorrt")
    with pytest.raises(TensorRTUnavailableError, match="tensorrt-rtx-cu13|engines"):
        detect_tensorrt()


def test_cli_builds_then_reports_current(tmp_path, rtx, monkeypatch, capsys):
    monkeypatch.setenv(trt_runtime.FLAVOUR_ENV, "tensorrt_rtx")
    onnx_path = tiny_encoder(tmp_path / "tiny.onnx")
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(
        'name = "tiny"\ntask = "embedding"\n'
        '[model]\ncheckpoint = "/nonexistent"\nmax_sequence_length = 64\nlength_buckets = [8, 16, 32, 64]\n'
        "[batching]\nmax_batch_size = 8\noptimal_batch_size = 4\n"
        '[engine.gpu]\nbackend = "tensorrt"\nprecision = "fp32"\n'
    )
    plan = tmp_path / "cli.plan"
    argv = ["plan", "--onnx", str(onnx_path), "--plan", str(plan), "--spec", str(spec_file), "--workspace-gb", "0.25"]
    assert cli.main(argv) == 0
    assert plan.stat().st_size > 0
    assert EngineRecord.load(record_path(plan)).precision == "fp32"
    assert cli.main(argv) == 0
    assert "is current" in capsys.readouterr().out
    # a missing spec is a spec error (exit status 2, as for `trtserve-build engines`), with its path
    assert cli.main([*argv[:5], "--spec", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
