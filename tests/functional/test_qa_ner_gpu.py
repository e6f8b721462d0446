"""qa / ner in the gpu variant: real TensorRT-RTX plans whose profiles hold max_windows rows, and
the gpu repository's windowed tokenizer answering in the real server (no GPU here to run a plan)."""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import trtserve_contract as contract

pytestmark = pytest.mark.slow


#: Items the build's fidelity gate runs on here (the deployments' default is every one of the 220:
#: minutes of the FP16-faithful interpreter on this CPU for qa's 417 windows).
GATE_ITEMS = 32


def _gated_on(spec):
    return dataclasses.replace(spec, precision=dataclasses.replace(spec.precision, fidelity_samples=GATE_ITEMS))


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory, qa_spec, ner_spec):
    from trtserve_build.pipeline.build import build_variant

    return build_variant([_gated_on(qa_spec), _gated_on(ner_spec)], "gpu", tmp_path_factory.mktemp("gpu") / "gpu")


@pytest.mark.parametrize("name, max_length, max_windows", [("qa", 384, 128), ("ner", 128, 256)])
def test_plans_hold_a_request_of_max_windows_rows(gpu_repository, name, max_length, max_windows):
    encoder = gpu_repository / f"{name}_encoder"
    assert (encoder / "1" / "model.plan").stat().st_size > 1_000_000
    record = json.loads((encoder / "engine_record.json").read_text())
    shapes = json.dumps(record["profiles"])
    assert f"[{max_windows}, {max_length}]" in shapes, shapes  # max_windows rows x max length
    assert record["precision"] == "hybrid"  # the gpu variant's default (deployments/{qa,ner}.toml)


@pytest.mark.parametrize("name", ["qa", "ner"])
def test_the_build_gated_the_hybrid_graph_on_the_specs_fidelity_samples(gpu_repository, name, qa_spec, ner_spec):
    """The hybrid build ran its fidelity gate (cached beside the graph) on the spec's
    fidelity_samples items of the windowed set, through the served windows and postprocess."""
    from trtserve_build.core.paths import fidelity_cache_path

    spec = {"qa": qa_spec, "ner": ner_spec}[name]
    cached = json.loads(fidelity_cache_path(spec, "hybrid").read_text())
    assert cached["passed"] and cached["key"]["samples"] == GATE_ITEMS
    rows = {r["precision"]: r for r in cached["rows"]}
    assert rows["fp32"]["texts"] == rows["hybrid"]["texts"] == GATE_ITEMS
    assert rows["hybrid"]["windows"] >= GATE_ITEMS and rows["hybrid"]["nonfinite_fraction"] == 0.0


def _ready(client, model: str) -> bool:
    try:
        return client.is_model_ready(model)
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def test_gpu_repository_tokenizer_windows_a_long_context(gpu_repository, tmp_path, review_corpus):
    from trtserve_server.embedded import EmbeddedServer, Ports
    import tritonclient.http as httpclient

    srv = EmbeddedServer(gpu_repository, Ports.free(), log_path=tmp_path / "triton.log",
                         extra_args=["--model-control-mode=explicit", "--load-model=qa_tokenizer"])
    srv.start()
    try:
        # only the tokenizer is loaded: no deployment to wait for (EmbeddedServer.wait_ready), its own readiness
        client = httpclient.InferenceServerClient(srv.http_url)
        deadline = time.monotonic() + 400
        while not _ready(client, "qa_tokenizer"):
            assert srv.process.poll() is None, f"tritonserver exited; see {tmp_path / 'triton.log'}"
            assert time.monotonic() < deadline, f"qa_tokenizer not ready after 400 s; see {tmp_path / 'triton.log'}"
            time.sleep(0.5)
        context = " ".join(review_corpus[:80])
        inputs = []
        for name, value in ((contract.QUESTION, "what is it?"), (contract.CONTEXT, context)):
            tensor = httpclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
            inputs.append(tensor)
        result = client.infer("qa_tokenizer", inputs)
        ids, items = result.as_numpy(contract.INPUT_IDS), result.as_numpy(contract.WINDOW_ITEM)
        assert ids.shape[0] > 3 and ids.shape[1] == 384 and (items == 0).all()
        client.close()
    finally:
        srv.stop()
