"""Client side of ``generate`` without a server: request tensors, the stream object, the CLI."""
from __future__ import annotations

import io

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_client.generation import GenerationOptions, GenerationStream, _http_error
from trtserve_client.errors import BadInputError, InferenceError, ServerOverloadedError


def test_options_become_1xN_tensors_with_contract_types():
    tensors = {name: (array, dtype) for name, array, dtype in GenerationOptions(
        max_new_tokens=8, temperature=0.5, seed=3, stop=("\n", "END")).tensors("héllo")}
    assert set(tensors) == {contract.PROMPT, contract.MAX_NEW_TOKENS, contract.TEMPERATURE, contract.SEED, contract.STOP}
    assert tensors[contract.PROMPT][0].tolist() == [["héllo".encode()]] and tensors[contract.PROMPT][1] == "BYTES"
    assert tensors[contract.MAX_NEW_TOKENS][0].dtype == np.int32 and tensors[contract.MAX_NEW_TOKENS][0].shape == (1, 1)
    assert tensors[contract.SEED][1] == "INT64"
    assert tensors[contract.STOP][0].shape == (1, 2)
    assert GenerationOptions().fields() == {}  # unset options are not sent: the server's defaults apply


def _events(*pieces, reason="length"):
    for p in pieces[:-1]:
        yield {contract.TEXT: np.array([[p.encode()]], dtype=object)}
    yield {contract.TEXT: np.array([[pieces[-1].encode()]], dtype=object),
           contract.FINISH_REASON: np.array([[reason.encode()]], dtype=object), contract.TOKENS: np.array([[5]], np.int32)}


def test_stream_yields_pieces_then_holds_the_final_fields():
    stream = GenerationStream(_events("a", "€", "", "b", reason="stop"))
    assert list(stream) == ["a", "€", "b"]
    assert (stream.text, stream.finish_reason, stream.tokens) == ("a€b", "stop", 5)
    assert stream.first_piece_s is not None and stream.total_s >= stream.first_piece_s


def test_stream_accepts_http_json_events():
    events = iter([{"TEXT": "x"}, {"TEXT": "y", "FINISH_REASON": "eos", "TOKENS": 2}])
    result = GenerationStream(events).result()
    assert (result.text, result.finish_reason, result.tokens) == ("xy", "eos", 2)


def test_a_stream_without_a_final_response_is_an_error():
    with pytest.raises(InferenceError, match="without a final response"):
        list(GenerationStream(iter([{"TEXT": "x"}])))


def test_http_errors_are_typed():
    assert isinstance(_http_error(400, '{"error":"MAX_NEW_TOKENS must be in 1..48"}', "generate"), BadInputError)
    overloaded = _http_error(400, '{"error":"too many pending sequences: 2 held"}', "generate")
    assert isinstance(overloaded, ServerOverloadedError)


def test_cli_generate_prints_pieces_as_they_arrive(monkeypatch, capsys):
    from trtserve_client import cli

    class FakeClient:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def generate(self, prompt, **options):
            assert prompt == "The film" and options["max_new_tokens"] == 3 and options["stop"] == ["."]
            return GenerationStream(_events(" was", " very", " good"))

    monkeypatch.setattr(cli, "TrtServeClient", FakeClient)
    assert cli.main(["generate", "The film", "--max-new-tokens", "3", "--stop", "."]) == 0
    out = capsys.readouterr()
    assert out.out == " was very good\n"
    assert "[length, 5 tokens" in out.err
