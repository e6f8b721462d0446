"""Generation logic without an engine: sampling, UTF-8-safe streaming, STOP strings, request limits."""
from __future__ import annotations

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.generation.requests import GenerationInputError, GenerationLimits, parse_request
from trtserve_backend.generation.sampling import Sampler, SamplingError, SamplingParams, nucleus_probabilities
from trtserve_backend.generation.text import IncrementalDecoder, StopMatcher, TokenBytes

# ---- sampling ------------------------------------------------------------------------------


def test_greedy_is_argmax_lowest_id_on_ties():
    assert Sampler(SamplingParams())(np.array([0.1, 3.0, 3.0, -1.0])) == 1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=500).astype(np.float32) for _ in range(40)]

    def draw(seed):
        sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=seed))
        return [sampler(row) for row in logits]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    probs = nucleus_probabilities(logits, temperature=1.0, top_p=0.75)
    assert np.allclose(probs, [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    # the top token is always kept, however small top_p
    assert np.allclose(nucleus_probabilities(logits, 1.0, 0.01), [1, 0, 0, 0])


def test_sampling_never_picks_outside_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.09, 0.01]))
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.85, seed=1))
    picks = {sampler(logits) for _ in range(300)}
    assert picks == {0, 1}


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0),
                                    dict(top_p=1.5), dict(seed=-3)])
def test_bad_sampling_settings_are_rejected(kwargs):
    with pytest.raises(SamplingError):
        SamplingParams(**kwargs)


# ---- UTF-8-safe streaming ------------------------------------------------------------------

def _table():
    # token 0: "a", 1-3: the three bytes of "€" one by one, 4: an invalid lone continuation byte,
    # 5: the first two bytes of "€", 6: "b", 7: the 4-byte emoji split 1+3
    euro = "€".encode()
    emoji = "😀".encode()
    return TokenBytes([b"a", euro[:1], euro[1:2], euro[2:], b"\x80", euro[:2], b"b", emoji[:1], emoji[1:]])


def test_pieces_are_emitted_only_when_valid_utf8():
    dec = IncrementalDecoder(_table())
    assert dec.push(0) == "a"
    assert dec.push(1) == ""
    assert dec.push(2) == ""
    assert dec.push(3) == "€"
    assert dec.push(7) == ""
    assert dec.push(8) == "😀"


@pytest.mark.parametrize("seed", range(20))
def test_concatenated_pieces_equal_the_lossy_decode_of_all_tokens(seed):
    table = _table()
    ids = list(np.random.default_rng(seed).integers(0, len(table), 30))
    dec = IncrementalDecoder(table)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == table.decode(ids)
    for p in pieces:
        p.encode("utf-8")  # every piece is valid UTF-8 on its own


def test_unfinished_character_at_the_end_becomes_replacement():
    dec = IncrementalDecoder(_table())
    assert dec.push(5) == ""
    assert dec.flush() == "\ufffd"


# ---- STOP strings --------------------------------------------------------------------------

def test_stop_string_split_over_pieces_is_held_back_and_cut():
    m = StopMatcher(["\n\n", "END"])
    assert m.feed("hello E") == ("hello ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("Dgame") == ("", True)


def test_held_text_is_released_when_it_cannot_start_a_stop():
    m = StopMatcher(["END"])
    assert m.feed("the E") == ("the ", False)
    assert m.feed("xit") == ("Exit", False)
    assert m.feed("EN") == ("", False)
    assert m.flush() == "EN"


def test_first_stop_in_the_text_wins():
    assert StopMatcher(["b", "a"]).feed("xxab") == ("xx", True)


# ---- request parsing and limits ------------------------------------------------------------

LIMITS = GenerationLimits(context_length=64, max_prompt_tokens=40, max_new_tokens=24, default_max_new_tokens=16,
                          max_sequences=4)


def _encode(text):
    return [ord(c) % 100 for c in text]


def _arrays(prompt=b"hello", **extra):
    arrays = {contract.PROMPT: np.array([[prompt]], dtype=np.object_)}
    arrays.update(extra)
    return arrays


def test_parse_defaults_and_settings():
    req = parse_request(_arrays(), _encode, LIMITS, bos_id=99)
    assert req.prompt_ids == _encode("hello") and req.max_new_tokens == 16 and req.sampling.greedy and req.stops == ()
    req = parse_request(_arrays(**{
        contract.MAX_NEW_TOKENS: np.array([[5]], np.int32), contract.TEMPERATURE: np.array([[0.7]], np.float32),
        contract.TOP_P: np.array([[0.9]], np.float32), contract.SEED: np.array([[11]], np.int64),
        contract.STOP: np.array([[b".", b"\n"]], np.object_)}), _encode, LIMITS, bos_id=99)
    assert req.max_new_tokens == 5 and req.sampling.seed == 11 and req.stops == (".", "\n")
    assert req.sampling.temperature == pytest.approx(0.7)


def test_empty_prompt_starts_from_bos():
    assert parse_request(_arrays(b""), _encode, LIMITS, bos_id=99).prompt_ids == [99]


@pytest.mark.parametrize("arrays, message", [
    (_arrays(b"x" * 41), "PROMPT is 41 tokens long; this model accepts at most 40"),
    (_arrays(**{contract.MAX_NEW_TOKENS: np.array([[25]], np.int32)}), "MAX_NEW_TOKENS must be in 1..24, got 25"),
    (_arrays(**{contract.MAX_NEW_TOKENS: np.array([[0]], np.int32)}), "MAX_NEW_TOKENS must be in 1..24, got 0"),
    (_arrays(b"\xff"), "PROMPT[0] is not valid UTF-8: byte 0xff at offset 0"),
    (_arrays(**{contract.TEMPERATURE: np.array([[-1.0]], np.float32)}), "TEMPERATURE must be"),
    (_arrays(**{contract.TOP_P: np.array([[0.0]], np.float32)}), "TOP_P must be in (0, 1]"),
    ({contract.PROMPT: np.array([[b"a"], [b"b"]], np.object_)}, "one prompt per request, got 2"),
    ({}, "request lacks input 'PROMPT'"),
    (_arrays(**{contract.STOP: np.array([[b"x"] * 5], np.object_)}), "at most 4 strings"),
])
def test_bad_requests_get_clear_errors(arrays, message):
    with pytest.raises(GenerationInputError) as e:
        parse_request(arrays, _encode, LIMITS, bos_id=99)
    assert message in str(e.value)


def test_limits_must_fit_the_context():
    with pytest.raises(ValueError, match="exceed the model's context"):
        GenerationLimits(context_length=32, max_prompt_tokens=24, max_new_tokens=16, default_max_new_tokens=8,
                         max_sequences=2)


# ---- the Triton response sender as the scheduler's sink (with a stand-in for pb_utils) -----

class _FakePb:
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class TritonError:
        INVALID_ARG = "INVALID_ARG"
        UNAVAILABLE = "UNAVAILABLE"

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error


class _FakeRequest:
    def __init__(self, parameters="{}"):
        self.sent = []
        self._parameters = parameters

    def get_response_sender(self):
        request = self

        class Sender:
            def send(self, response=None, flags=0):
                request.sent.append((response, flags))

            def is_cancelled(self):
                return False

        return Sender()

    def parameters(self):
        return self._parameters


DTYPES = {contract.TEXT: np.object_, contract.FINISH_REASON: np.object_, contract.TOKENS: np.int32}


def test_sink_streams_pieces_and_ends_with_reason_and_count():
    from trtserve_backend.generation.responses import ResponseSink

    request = _FakeRequest()
    sink = ResponseSink(_FakePb, request, DTYPES)
    sink.send("Hel")
    sink.finish("lo", "eos", 3)
    sink.fail("late")  # after the final response nothing more is sent
    (first, f1), (last, f2) = request.sent
    assert first.outputs[contract.TEXT].tolist() == [[b"Hel"]] and f1 == 0
    assert last.outputs[contract.TEXT].tolist() == [[b"lo"]] and f2 == 1
    assert last.outputs[contract.FINISH_REASON].tolist() == [[b"eos"]]
    assert last.outputs[contract.TOKENS].dtype == np.int32 and last.outputs[contract.TOKENS].tolist() == [[3]]


def test_sink_answers_once_when_the_request_asks_not_to_stream():
    from trtserve_backend.generation.responses import ResponseSink

    request = _FakeRequest('{"stream": false}')
    sink = ResponseSink(_FakePb, request, DTYPES)
    sink.send("a")
    sink.send("b")
    sink.finish("c", "length", 3)
    [(response, flags)] = request.sent
    assert response.outputs[contract.TEXT].tolist() == [[b"abc"]] and flags == 1


def test_sink_errors_carry_their_code():
    from trtserve_backend.generation.responses import ResponseSink

    request = _FakeRequest()
    ResponseSink(_FakePb, request, DTYPES).fail("MAX_NEW_TOKENS must be in 1..48", "INVALID_ARG")
    [(response, flags)] = request.sent
    assert response.error.code == "INVALID_ARG" and "MAX_NEW_TOKENS" in response.error.message and flags == 1
