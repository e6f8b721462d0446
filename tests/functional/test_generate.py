"""``generate`` through the real embedded Triton: streaming over gRPC and HTTP, exact greedy output.

The repository holds the decoupled ``generate`` model over the ONNX export (with past key/values)
of a tiny GPT-2 with seeded random weights and the real tokenizer; two more models over the same
graph exercise EOS and the capacity limit. Every greedy stream must equal Hugging Face
``generate(do_sample=False)`` of the same checkpoint token for token (the text and the count),
on 50 real prompts, alone and while other streams run.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trtserve_backend.generation.requests import GenerationLimits
from trtserve_backend.generation.text import TokenBytes

EOS = 50256
REPO_ROOT = Path(__file__).resolve().parents[2]
LIMITS = GenerationLimits(context_length=256, max_prompt_tokens=64, max_new_tokens=48, default_max_new_tokens=16,
                          max_sequences=32)
# generate_limited: two sequences at most, on a 4,096-position model, so a stream asked for HOLD
# tokens runs for many seconds (about 1 ms a step at the very least) and the tests that hold its
# slots are not racing the holders' end; they close the holders themselves.
LONG_CONTEXT = 4096
HOLD = 4000
LIMITED = GenerationLimits(context_length=LONG_CONTEXT, max_prompt_tokens=56, max_new_tokens=HOLD,
                           default_max_new_tokens=16, max_sequences=2)
FREED = "generate: freed the sequence"
NEW_TOKENS = 16
N_PROMPTS = 50


@pytest.fixture(scope="module")
def hf_model(gpt2_tiny_checkpoint):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    return (GPT2LMHeadModel.from_pretrained(str(gpt2_tiny_checkpoint)).eval(),
            AutoTokenizer.from_pretrained(str(gpt2_tiny_checkpoint)))


@pytest.fixture(scope="module")
def prompts(gpt2_prompts, hf_model):
    _, tok = hf_model
    chosen = [p for p in gpt2_prompts if len(tok(p)["input_ids"]) <= LIMITS.max_prompt_tokens][:N_PROMPTS]
    assert len(chosen) == N_PROMPTS
    return chosen


@pytest.fixture(scope="module")
def expected(prompts, hf_model, gpt2_tiny_checkpoint):
    """prompt -> (text, finish reason, tokens) of HF greedy generate, NEW_TOKENS new tokens."""
    import torch

    model, tok = hf_model
    token_bytes = TokenBytes.from_tokenizer_json(str(gpt2_tiny_checkpoint / "tokenizer.json"))
    out = {}
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=EOS)[0, ids.shape[1]:].tolist()
        reason = "eos" if new[-1] == EOS else "length"
        out[p] = (token_bytes.decode([t for t in new if t != EOS]), reason, len(new), new)
    return out


@pytest.fixture(scope="module")
def gpt2_long_checkpoint():
    """The tiny architecture with 4,096 positions (seeded random weights), for generate_limited."""
    from trtserve_build.core.paths import cache_dir
    from trtserve_build.models.gpt2 import random_checkpoint

    return random_checkpoint(cache_dir() / "checkpoints" / "gpt2-tiny-random-4k", size="tiny", seed=0,
                             n_positions=LONG_CONTEXT)


@pytest.fixture(scope="module")
def generate_server(gpt2_tiny_onnx, gpt2_tiny_checkpoint, gpt2_long_checkpoint, tmp_path_factory, expected, prompts):
    from trtserve_build.pipeline.generate import write_generate
    from trtserve_build.stages.generate_config import GenerateSettings
    from trtserve_server.embedded import EmbeddedServer, Ports

    root = tmp_path_factory.mktemp("generate-repo")
    settings = GenerateSettings(limits=LIMITS)
    write_generate(root, gpt2_tiny_onnx, gpt2_tiny_checkpoint, settings)
    # the same graph with the 5th greedy token of prompts[0] declared EOS: a real EOS stop
    eos_id = expected[prompts[0]][3][4]
    write_generate(root, gpt2_tiny_onnx, gpt2_tiny_checkpoint, replace(settings, eos_token_id=eos_id),
                         name="generate_eos")
    # the torch engine (eager on the CPU): its static cache makes a step cost the same at any length
    write_generate(root, gpt2_long_checkpoint, gpt2_long_checkpoint,
                         GenerateSettings(limits=LIMITED, max_decode_batch=2, engine="torch", precision="fp32"),
                         name="generate_limited")
    # the torch engine (static KV cache; CUDA graphs on a GPU, eager here) served the same way
    write_generate(root, gpt2_tiny_checkpoint, gpt2_tiny_checkpoint,
                         GenerateSettings(limits=LIMITS, engine="torch", precision="fp32", graph_batch_sizes=(1, 2, 4, 8)),
                         name="generate_torch")
    log = tmp_path_factory.mktemp("generate-logs") / "triton.log"
    server = EmbeddedServer(root, Ports.free(), log_path=log, extra_args=["--log-info=true"])
    server.start()
    try:
        _wait_generate(server, ["generate", "generate_eos", "generate_limited", "generate_torch"])
        server.eos_id = eos_id
        yield server
    finally:
        server.stop()


def _wait_generate(server, models, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"tritonserver exited; see {server.log_path}")
        try:
            for model in models:
                _post(server, f"/v2/models/{model}/generate_stream", {"PROMPT": "ready?", "MAX_NEW_TOKENS": 1})
            return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.5)
    raise RuntimeError(f"generate not ready after {timeout_s}s: {last}; see {server.log_path}")


def _post(server, path, body, timeout=30):
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


def _client(server, protocol="grpc"):
    from trtserve_client import TrtServeClient

    url = server.grpc_url if protocol == "grpc" else server.http_url
    return TrtServeClient(url, protocol=protocol, timeout_s=60)


def _generate(server, prompt, protocol="grpc", **options):
    with _client(server, protocol) as client:
        stream = client.generate(prompt, **options)
        pieces = list(stream)
        return stream, pieces


def test_greedy_equals_hf_generate_on_50_real_prompts_alone(generate_server, prompts, expected):
    mismatches = []
    for p in prompts:
        stream, _ = _generate(generate_server, p, max_new_tokens=NEW_TOKENS)
        got = (stream.text, stream.finish_reason, stream.tokens)
        if got != expected[p][:3]:
            mismatches.append((p, got, expected[p][:3]))
    assert not mismatches, f"{len(mismatches)}/{len(prompts)} differ, first: {mismatches[0]}"


def test_greedy_exact_while_other_streams_run(generate_server, prompts, expected):
    """All 50 prompts at once from 8 client threads, with sampled streams running beside them."""
    events = []  # (time, prompt, kind)
    lock = threading.Lock()

    def run(p):
        stream, pieces = None, []
        with _client(generate_server) as client:
            stream = client.generate(p, max_new_tokens=NEW_TOKENS)
            for piece in stream:
                with lock:
                    events.append((time.monotonic(), p, "piece"))
                pieces.append(piece)
        with lock:
            events.append((time.monotonic(), p, "final"))
        return p, (stream.text, stream.finish_reason, stream.tokens)

    def noise(i):
        return _generate(generate_server, prompts[i], temperature=1.0, top_p=0.9, seed=i, max_new_tokens=40)[0].finish_reason

    with ThreadPoolExecutor(12) as pool:
        noisy = [pool.submit(noise, i) for i in range(4)]
        results = dict(pool.map(run, prompts))
        assert all(f.result() in ("length", "eos") for f in noisy)
    wrong = {p: (results[p], expected[p][:3]) for p in prompts if results[p] != expected[p][:3]}
    assert not wrong, f"{len(wrong)} streams differ under concurrency, e.g. {next(iter(wrong.items()))}"
    # streams overlapped: some stream got a piece after another had started and before it ended
    firsts = {}
    finals = {}
    for t, p, kind in events:
        if kind == "piece":
            firsts.setdefault(p, t)
        else:
            finals[p] = t
    overlapping = sum(1 for p in prompts for q in prompts if p != q and firsts[p] < finals[q] and firsts[q] < finals[p])
    assert overlapping > 0


def test_torch_engine_served_equals_hf_generate(generate_server, prompts, expected):
    """The GPU variant's engine (eager on this CPU) behind the same model, concurrent streams."""
    def run(p):
        with _client(generate_server) as client:
            r = client.generate_text(p, max_new_tokens=NEW_TOKENS, model="generate_torch")
        return p, (r.text, r.finish_reason, r.tokens)

    with ThreadPoolExecutor(6) as pool:
        results = dict(pool.map(run, prompts[:12]))
    assert all(results[p] == expected[p][:3] for p in prompts[:12])


def test_locust_streaming_user_reports_ttft_and_tokens_per_s(generate_server, tmp_path):
    import subprocess
    import sys

    report = tmp_path / "generate.json"
    locust = Path(sys.executable).with_name("locust")
    proc = subprocess.run([str(locust), "-f", str(REPO_ROOT / "loadtest" / "generate_user.py"), "--headless",
                           "-u", "4", "-r", "4", "-t", "8s", "--stop-timeout", "60", "--host", generate_server.grpc_url,
                           "--gen-max-new-tokens", "12", "--gen-report", str(report), "--only-summary"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(report.read_text())
    # every user finishes the stream it is in when the run ends (--stop-timeout)
    assert data["streams"] >= 4 and data["failures"] == 0 and data["tokens"] >= data["streams"]
    assert data["tokens_per_s"] > 0 and 0 < data["ttft_ms_p50"] <= data["ttft_ms_p95"]
    assert "generate: first piece" in proc.stdout + proc.stderr


def test_http_generate_stream_and_curl_form(generate_server, prompts, expected):
    for p in prompts[:5]:
        stream, pieces = _generate(generate_server, p, protocol="http", max_new_tokens=NEW_TOKENS)
        assert (stream.text, stream.finish_reason, stream.tokens) == expected[p][:3]
    raw = _post(generate_server, "/v2/models/generate/generate_stream", {"PROMPT": prompts[0], "MAX_NEW_TOKENS": NEW_TOKENS})
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    assert "".join(e["TEXT"] for e in events) == expected[prompts[0]][0]
    assert events[-1]["FINISH_REASON"] == expected[prompts[0]][1] and events[-1]["TOKENS"] == NEW_TOKENS


def test_http_generate_endpoint_answers_once_with_stream_false(generate_server, prompts, expected):
    """curl -d '{"PROMPT": "...", "stream": false}' .../v2/models/generate/generate"""
    body = json.loads(_post(generate_server, "/v2/models/generate/generate",
                            {"PROMPT": prompts[2], "MAX_NEW_TOKENS": NEW_TOKENS, "stream": False}))
    assert (body["TEXT"], body["FINISH_REASON"], body["TOKENS"]) == expected[prompts[2]][:3]


def test_seeded_sampling_is_reproducible(generate_server, prompts):
    def sample(seed, protocol="grpc"):
        return _generate(generate_server, prompts[3], protocol, temperature=0.9, top_p=0.95, seed=seed,
                         max_new_tokens=24)[0].text

    first = sample(123)
    assert sample(123) == first
    assert sample(123, "http") == first
    assert sample(124) != first


def test_stop_and_eos_end_the_stream_with_their_reason(generate_server, prompts, expected):
    text = expected[prompts[1]][0]
    stop = text[6:9]
    stream, _ = _generate(generate_server, prompts[1], max_new_tokens=NEW_TOKENS, stop=[stop, "never appears"])
    assert stream.finish_reason == "stop" and stream.text == text[:text.index(stop)]
    with _client(generate_server) as client:
        stream = client.generate(prompts[0], max_new_tokens=NEW_TOKENS, model="generate_eos")
        result = stream.result()
    tokens = expected[prompts[0]][3]
    first = tokens.index(generate_server.eos_id)
    assert (result.finish_reason, result.tokens) == ("eos", first + 1)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_gets_a_clear_error_and_the_next_request_is_answered(generate_server, prompts, protocol):
    from trtserve_client import BadInputError, TrtServeError

    cases = [
        (dict(prompt="word " * 200), "accepts at most 64"),
        # the byte limit is checked before the prompt is decoded or tokenized
        (dict(prompt="x" * (1_048_576 + 1)), "PROMPT: request text is over the limit of 1048576 bytes"),
        (dict(prompt="hi", max_new_tokens=49), "MAX_NEW_TOKENS must be in 1..48, got 49"),
        (dict(prompt="hi", max_new_tokens=0), "MAX_NEW_TOKENS must be in 1..48"),
        (dict(prompt="hi", top_p=1.5), "TOP_P must be in (0, 1]"),
        (dict(prompt="hi", temperature=-0.5), "TEMPERATURE must be"),
    ]
    for kwargs, message in cases:
        with pytest.raises(TrtServeError) as e:
            _generate(generate_server, protocol=protocol, **kwargs)
        assert message in str(e.value)
        assert isinstance(e.value, BadInputError), type(e.value)
        stream, _ = _generate(generate_server, prompts[0], protocol, max_new_tokens=4)
        assert stream.tokens == 4


@pytest.mark.parametrize("prompt", ["", "   ", "\x00\x07 control \x1b", "😀 émoji, Ελληνικά, 日本語, עברית"])
def test_unusual_prompts_are_answered(generate_server, prompt):
    """Like the other models' unusual text: answered (an empty prompt starts from <|endoftext|>)."""
    stream, pieces = _generate(generate_server, prompt, protocol="http", max_new_tokens=5)
    assert stream.tokens == 5 or stream.finish_reason == "eos"
    for p in pieces:
        p.encode("utf-8")


def test_unknown_model_and_oversized_batch_get_triton_errors(generate_server, prompts):
    import tritonclient.grpc as grpcclient

    from trtserve_client import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        _generate(generate_server, "hi", model="no_such_model")
    client = grpcclient.InferenceServerClient(generate_server.grpc_url)
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    batch = grpcclient.InferInput("PROMPT", [9, 1], "BYTES")
    batch.set_data_from_numpy(np.array([[b"x"]] * 9, dtype=np.object_))
    client.async_stream_infer("generate", [batch])
    deadline = time.monotonic() + 20
    while not results and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    client.close()
    assert results and results[0][0] is None and "batch-size must be <= 8" in str(results[0][1])
    stream, _ = _generate(generate_server, prompts[0], max_new_tokens=2)
    assert stream.tokens == 2


def test_invalid_utf8_wrong_dtype_and_unknown_input_over_grpc(generate_server, prompts):
    import tritonclient.grpc as grpcclient

    def send(inputs):
        client = grpcclient.InferenceServerClient(generate_server.grpc_url)
        results = []
        client.start_stream(callback=lambda result, error: results.append((result, error)))
        client.async_stream_infer("generate", inputs)
        deadline = time.monotonic() + 20
        while not results and time.monotonic() < deadline:
            time.sleep(0.05)
        client.stop_stream()
        client.close()
        return results

    def tensor(name, array, dtype):
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    prompt = tensor("PROMPT", np.array([[b"\xff\xfe"]], dtype=np.object_), "BYTES")
    [(result, error)] = send([prompt])
    assert result is None and "PROMPT[0] is not valid UTF-8: byte 0xff at offset 0" in str(error)
    good = tensor("PROMPT", np.array([[b"hi"]], dtype=np.object_), "BYTES")
    [(result, error)] = send([good, tensor("MAX_NEW_TOKENS", np.array([[3.0]], np.float32), "FP32")])
    assert result is None and "MAX_NEW_TOKENS" in str(error)
    [(result, error)] = send([good, tensor("NOT_AN_INPUT", np.array([[1]], np.int32), "INT32")])
    assert result is None and "NOT_AN_INPUT" in str(error)
    stream, _ = _generate(generate_server, prompts[0], max_new_tokens=2)
    assert stream.tokens == 2


def _freed(server) -> int:
    """How many sequences the server has freed for clients that went away (its log)."""
    return server.log_path.read_text(errors="replace").count(FREED)


def _wait_freed(server, at_least: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while _freed(server) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return _freed(server)


def test_capacity_limit_refuses_then_recovers(generate_server, prompts):
    """Two streams hold generate_limited's two sequences (HOLD tokens each: many seconds); a third
    request is refused over gRPC and HTTP with a clear error while both are verifiably still
    streaming; the holders disconnect, their sequences are freed and the next request is served."""
    from trtserve_client import ServerOverloadedError

    freed = _freed(generate_server)
    with _client(generate_server, "http") as a, _client(generate_server, "http") as b:
        holders = [a.generate(prompts[0], max_new_tokens=HOLD, model="generate_limited"),
                   b.generate(prompts[1], max_new_tokens=HOLD, model="generate_limited")]
        for holder in holders:
            next(holder)  # admitted and decoding
        for protocol in ("grpc", "http"):
            with pytest.raises(ServerOverloadedError, match="max_sequences 2; try again later"):
                _generate(generate_server, prompts[2], protocol, max_new_tokens=2, model="generate_limited")
        for holder in holders:  # both held their sequence through the refusals: still streaming now
            next(holder)
            assert holder.finish_reason is None, "a holder finished: the refusal proved nothing"
            holder.close()  # HTTP: the connection closes mid-stream, the server frees the sequence
    assert _wait_freed(generate_server, freed + 2) >= freed + 2, "the disconnected holders were not freed"
    stream, _ = _generate(generate_server, prompts[2], max_new_tokens=2, model="generate_limited")
    assert (stream.tokens, stream.finish_reason) == (2, "length")


def test_http_client_disconnect_frees_its_sequence(generate_server, prompts):
    import http.client

    freed = _freed(generate_server)
    for _ in range(2):
        conn = http.client.HTTPConnection(*generate_server.http_url.split(":"), timeout=30)
        conn.request("POST", "/v2/models/generate_limited/generate_stream",
                     body=json.dumps({"PROMPT": prompts[0], "MAX_NEW_TOKENS": HOLD}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b'data: {"TEXT"')
        conn.close()  # mid-stream: HOLD tokens take many seconds
    assert _wait_freed(generate_server, freed + 2) >= freed + 2, "the server did not notice the disconnects"
    stream, _ = _generate(generate_server, prompts[1], max_new_tokens=3, model="generate_limited")
    assert stream.tokens == 3
