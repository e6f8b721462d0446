"""The GPU variant: a real TensorRT plan (TensorRT-RTX here) in a repository whose configs load.

No TensorRT backend or GPU exists here, so the encoder cannot be served; the test builds the
plan through the production code path, checks the record and the generated configs, and loads
the variant's tokenizer and postprocess models in the real server.
"""
import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from trtserve_build.core.records import EngineRecord
from trtserve_build.core.pbtxt import read_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory, embed_spec):
    from trtserve_build.pipeline.build import build_variant

    return build_variant([embed_spec], "gpu", tmp_path_factory.mktemp("gpu") / "gpu")


def test_plan_and_record(gpu_repository, embed_spec):
    encoder = gpu_repository / embed_spec.encoder_model
    config = read_config(encoder / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    plan = encoder / "1" / "model.plan"
    assert plan.stat().st_size > 10_000_000
    record = EngineRecord.from_json((encoder / "engine_record.json").read_text())
    data = json.loads(record.to_json())
    assert data["precision"] == embed_spec.engine("gpu").precision == "hybrid"  # the gpu variant's default
    assert data["tensorrt_flavour"] in ("tensorrt", "tensorrt_rtx")
    assert data["plan_sha256"]
    shapes = json.dumps(data["profiles"])
    assert "256" in shapes and "64" in shapes  # max sequence and max batch from the spec


def test_gpu_repository_python_models_load_in_real_server(gpu_repository, embed_spec, tmp_path):
    from trtserve_server.embedded import EmbeddedServer, Ports

    server = EmbeddedServer(
        gpu_repository, Ports.free(), log_path=tmp_path / "triton.log",
        extra_args=["--model-control-mode=explicit", f"--load-model={embed_spec.tokenizer_model}",
                    f"--load-model={embed_spec.postprocess_model}"],
    )
    with server:
        client = httpclient.InferenceServerClient(server.http_url)
        for _ in range(240):
            try:
                if client.is_model_ready(embed_spec.tokenizer_model) and client.is_model_ready(embed_spec.postprocess_model):
                    break
            except Exception:  # noqa: BLE001 - still starting
                pass
            import time

            time.sleep(0.25)
        data = np.array([[b"hello world"]], dtype=np.object_)
        inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(data)
        result = client.infer(embed_spec.tokenizer_model, [inp])
        assert result.as_numpy("input_ids").shape == (1, 16)
        pooled = httpclient.InferInput("pooled", [1, 384], "FP32")
        pooled.set_data_from_numpy(np.ones((1, 384), dtype=np.float32))
        emb = client.infer(embed_spec.postprocess_model, [pooled]).as_numpy("EMBEDDING")
        np.testing.assert_allclose(np.linalg.norm(emb), 1.0, rtol=1e-5)
        client.close()
