import copy
import tomllib

import pytest

from trtserve_build.core.spec import SpecError, load_spec, parse_spec
from trtserve_build.core.tasks import UnknownTaskError, get_task

from ..conftest import DEPLOYMENTS


def _raw(name="embed"):
    with open(DEPLOYMENTS / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def test_shipped_specs_load(sentiment_spec, embed_spec):
    assert sentiment_spec.task == "classification"
    assert sentiment_spec.model.labels == ("negative", "positive")
    assert sentiment_spec.batching.max_batch_size >= 64
    assert embed_spec.model.length_buckets[-1] == embed_spec.model.max_sequence_length
    assert sentiment_spec.encoder_model == "sentiment_encoder"
    assert set(embed_spec.engines) == {"cpu", "gpu", "gpu_torch"}
    # one Python model where the engine runs in Python; TensorRT (a C++ backend) stays an ensemble
    assert [embed_spec.topology(v) for v in ("cpu", "gpu", "gpu_torch")] == ["single", "ensemble", "single"]


def test_unknown_keys_are_rejected():
    raw = _raw()
    raw["model"]["max_seq_len"] = 128
    with pytest.raises(SpecError, match="unknown key.*max_seq_len"):
        parse_spec(raw)
    raw = _raw()
    raw["colour"] = "blue"
    with pytest.raises(SpecError, match="unknown top-level"):
        parse_spec(raw)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["model"].update(length_buckets=[64, 32, 256]), "strictly increasing"),
        (lambda r: r["model"].update(length_buckets=[16, 32]), "must equal"),
        (lambda r: r["model"].update(labels=["a", "b"]), "takes no model.labels"),
        (lambda r: r["batching"].update(preferred_batch_sizes=[128]), "preferred_batch_sizes"),
        (lambda r: r["engine"]["cpu"].update(backend="tvm"), "backend 'tvm'"),
        (lambda r: r["engine"]["cpu"].update(precision="bf8"), "precision 'bf8'"),
        (lambda r: r["export"].update(opset=13), "opset"),
        (lambda r: r.update(task="translation"), "unknown task"),
        (lambda r: r["engine"].update(tpu={"backend": "onnxruntime"}), "unknown engine variant"),
        (lambda r: r.update(name="my-model"), "valid identifier"),
        (lambda r: r["engine"]["cpu"].update(tokenizer_instances=0), r"\[engine.cpu\] tokenizer_instances must be >= 1"),
        (lambda r: r["engine"]["cpu"].update(postprocess_instances=0), "postprocess_instances must be >= 1"),
        (lambda r: r["engine"]["cpu"].update(instance_count="many"), r"instance_count must be >= 1 .* or \"auto\""),
        (lambda r: r["engine"]["cpu"].update(intra_op_threads=-1), "intra_op_threads must be >= 0"),
        (lambda r: r["engine"]["cpu"].update(topology="mesh"), "topology 'mesh'"),
        (lambda r: r["engine"]["cpu"].update(thread_spinning="yes"), r"thread_spinning must be true, false or \"auto\""),
        (lambda r: r["engine"]["cpu"].update(thread_spinning=1), r"thread_spinning must be true, false or \"auto\""),
        (lambda r: r["engine"]["cpu"].update(hot_intra_op_threads=-1), "hot_intra_op_threads must be >= 0"),
        (lambda r: r["engine"]["cpu"].update(hot_intra_op_threads="all"),
         r"hot_intra_op_threads must be .* or \"auto\""),
        (lambda r: r["engine"]["cpu"].update(hot_thread_spinning="yes"),
         r"hot_thread_spinning must be true, false or \"auto\""),
        (lambda r: r["engine"]["cpu"].update(solo_intra_op_threads=-2), "solo_intra_op_threads must be >= 0"),
        (lambda r: r["engine"]["gpu"].update(topology="single"), "topology \"single\" needs an engine that runs in"),
        (lambda r: r["engine"]["gpu_torch"].update(idle_poll_ms=-1), "idle_poll_ms must be an integer >= 0"),
        (lambda r: r["engine"]["gpu_torch"].update(idle_poll_ms=True), "idle_poll_ms must be an integer >= 0"),
        (lambda r: r["engine"]["gpu"].update(idle_poll_ms=20), "idle_poll_ms applies to backend \"torch\" served as"),
        (lambda r: r["engine"]["cpu"].update(idle_poll_ms=20), r"idle_poll_ms .* backend 'onnxruntime', topology 'single'"),
        (lambda r: r["engine"]["gpu_torch"].update(idle_poll_ms=20, topology="ensemble"), "topology 'ensemble'"),
    ],
)
def test_invalid_specs_name_the_problem(mutate, message):
    raw = copy.deepcopy(_raw())
    mutate(raw)
    with pytest.raises((SpecError, UnknownTaskError), match=message):
        parse_spec(raw)


def test_classification_needs_labels():
    raw = _raw("sentiment")
    raw["model"].pop("labels")
    with pytest.raises(SpecError, match="needs model.labels"):
        parse_spec(raw)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(bad)


def test_fingerprint_tracks_content(embed_spec):
    raw = _raw()
    raw["model"]["max_sequence_length"] = 128
    raw["model"]["length_buckets"] = [16, 32, 64, 128]
    other = parse_spec(raw)
    assert other.fingerprint("model") != embed_spec.fingerprint("model")
    # a cache key: pinned, so a change of the hashing (which would rebuild every cached
    # artifact) is a deliberate one; the spec file's path is not part of it
    assert embed_spec.fingerprint("model") == "d4a2d10f6a5d4b80"
    # (the whole-spec key changed deliberately with [batching] max_request_text_bytes /
    # max_request_texts, issue 15, and with the engine sections' topology and "auto" instances,
    # issue 13, and with the default precision gates' min_answer_agreement / min_entity_f1, issue
    # 14, and with the engine sections' thread_spinning and engine_format, issue 13, and with their
    # hot_intra_op_threads / hot_thread_spinning, and with solo_intra_op_threads, and with
    # idle_poll_ms, issue 13, and with embed.toml's gpu_torch turning it on: it keys the generated
    # repository; the "model" key above, which keys training and export, did not change)
    assert parse_spec(_raw()).fingerprint() == embed_spec.fingerprint() == "ab155c53d1eef749"
    # sections not asked for do not enter
    raw = _raw()
    raw["batching"]["max_queue_size"] = 7
    assert parse_spec(raw).fingerprint("model") == embed_spec.fingerprint("model")
    assert parse_spec(raw).fingerprint() != embed_spec.fingerprint()


def test_task_registry():
    task = get_task("embedding")
    assert task.encoder_output(384, 0).dims == (384,)
    with pytest.raises(UnknownTaskError, match="known tasks"):
        get_task("nope")
    assert issubclass(UnknownTaskError, SpecError)


def test_unknown_task_is_a_spec_error_naming_the_file_and_the_known_tasks(tmp_path, capsys):
    """`trtserve-build engines` reports it in one line (exit 2), not with a traceback."""
    from trtserve_build import cli

    raw = (DEPLOYMENTS / "embed.toml").read_text().replace('task = "embedding"', 'task = "question-answering"')
    assert 'task = "question-answering"' in raw
    spec_file = tmp_path / "qa.toml"
    spec_file.write_text(raw)
    with pytest.raises(SpecError, match=r"qa\.toml: unknown task 'question-answering'; known tasks: "
                                        r"\['classification', 'embedding', 'generation', 'question_answering', 'token_classification'\]"):
        load_spec(spec_file)
    assert cli.main(["engines", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert str(spec_file) in err and "known tasks" in err and "Traceback" not in err
