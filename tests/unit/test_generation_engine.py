"""The generation engines and the step-level scheduler against Hugging Face ``generate`` (no Triton).

A tiny GPT-2 with seeded random weights and the real tokenizer; prompts are real text. The ONNX
Runtime executor (the embedded server's) and the torch executor (the GPU server's, eager here)
must give the tokens ``generate(do_sample=False)`` gives, alone and batched with other sequences
that joined at other steps.
"""
from __future__ import annotations

import numpy as np
import pytest

import trtserve_contract as contract
from trtserve_backend.generation.requests import CapacityError, GenerationRequest
from trtserve_backend.generation.sampling import SamplingParams
from trtserve_backend.generation.scheduler import StepScheduler
from trtserve_backend.generation.text import TokenBytes

EOS = 50256
MAX_PROMPT = 40


class ListSink:
    def __init__(self):
        self.pieces, self.final, self.error, self.gone = [], None, None, False

    def send(self, text):
        assert self.final is None, "a piece after the final response"
        self.pieces.append(text)

    def finish(self, text, reason, tokens):
        self.final = (text, reason, tokens)

    def fail(self, message):
        self.error = message

    def cancelled(self):
        return self.gone

    @property
    def text(self):
        return "".join(self.pieces) + (self.final[0] if self.final else "")


@pytest.fixture(scope="module")
def hf(gpt2_tiny_checkpoint):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(gpt2_tiny_checkpoint)).eval()
    return model, AutoTokenizer.from_pretrained(str(gpt2_tiny_checkpoint))


@pytest.fixture(scope="module")
def token_bytes(gpt2_tiny_checkpoint):
    return TokenBytes.from_tokenizer_json(str(gpt2_tiny_checkpoint / "tokenizer.json"))


@pytest.fixture(scope="module")
def prompt_ids(hf, gpt2_prompts):
    _, tok = hf
    return [tok(p)["input_ids"][:MAX_PROMPT] for p in gpt2_prompts]


def hf_greedy(model, ids, max_new):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new, pad_token_id=EOS)
    return out[0, len(ids):].tolist()


def ort_executor(onnx_path, max_batch):
    from trtserve_backend.generation.ort_executor import OrtDecoderGraph, OrtExecutor

    return OrtExecutor(OrtDecoderGraph(str(onnx_path)), max_batch=max_batch)


def torch_executor(checkpoint, max_batch):
    from trtserve_backend.generation.torch_executor import TorchExecutor

    return TorchExecutor.from_checkpoint(str(checkpoint), max_batch=max_batch, dtype="fp32", device="cpu")


@pytest.fixture(params=["onnxruntime", "torch"])
def make_executor(request, gpt2_tiny_onnx, gpt2_tiny_checkpoint):
    if request.param == "onnxruntime":
        return lambda max_batch: ort_executor(gpt2_tiny_onnx, max_batch)
    return lambda max_batch: torch_executor(gpt2_tiny_checkpoint, max_batch)


def expected(token_bytes, ids):
    text_ids = [t for t in ids if t != EOS]
    reason = contract.FINISH_EOS if ids and ids[-1] == EOS else contract.FINISH_LENGTH
    return token_bytes.decode(text_ids), reason, len(ids)


def drain(scheduler, limit=10_000):
    for _ in range(limit):
        if not scheduler.pending():
            return
        scheduler.step()
    raise AssertionError("the scheduler did not finish")


def test_batched_decode_logits_equal_each_sequence_alone(make_executor, prompt_ids):
    """One step for three sequences of different lengths (left-padded pasts) = three steps alone."""
    batched = make_executor(4)
    for slot, ids in enumerate(prompt_ids[:3]):
        batched.prefill(slot, ids)
    tokens = [11, 22, 33]
    together = batched.decode([2, 0, 1], [tokens[2], tokens[0], tokens[1]])
    for slot, ids in enumerate(prompt_ids[:3]):
        alone = make_executor(1)
        alone.prefill(0, ids)
        row = [2, 0, 1].index(slot)
        np.testing.assert_allclose(together[row], alone.decode([0], [tokens[slot]])[0], atol=2e-4)


def test_prompts_batched_together_equal_each_prompt_alone(make_executor, prompt_ids):
    """Prompts of different lengths in one prefill_batch (right-padded for torch) give each prompt's
    own last logits, and the caches they leave decode as a prompt run alone does."""
    picked = sorted(prompt_ids[:5], key=len)[::2] + [prompt_ids[0][:1]]  # different lengths, one 1-token
    assert len({len(p) for p in picked}) == len(picked)
    batched = make_executor(8)
    slots = [5, 1, 3, 0][:len(picked)]
    together = batched.prefill_batch(slots, picked)
    steps = batched.decode(slots, [7] * len(slots))
    for i, ids in enumerate(picked):
        alone = make_executor(1)
        np.testing.assert_allclose(together[i], alone.prefill(0, ids), atol=2e-4)
        np.testing.assert_allclose(steps[i], alone.decode([0], [7])[0], atol=2e-4)


class _EagerGraph:
    """A CUDA graph's stand-in on the CPU: replay() recomputes the captured call into the same
    static tensors, so the executor's bucket choice, padding and scratch-cache copy run as on a GPU."""

    def __init__(self, executor, b, s):
        import torch

        self.ex, self.s = executor, s
        self.io = torch.ones(b, s + 1, dtype=torch.long)
        self.logits = torch.zeros(b, executor.w["wte.weight"].shape[0])

    def replay(self):
        s, ex = self.s, self.ex
        b = self.io.shape[0]
        self.logits.copy_(ex._prefill_rows(ex._prefill_k[:, :b, :, :s], ex._prefill_v[:, :b, :, :s],
                                           self.io[:, :s], self.io[:, s]))


def test_prompt_graph_buckets_give_each_prompt_alone(gpt2_tiny_checkpoint, prompt_ids):
    """The GPU path of prefill_batch (bucketed graphs writing a scratch cache that is copied into
    the rows), replayed eagerly: 11 prompts -> chunks of <= 4 rows, padded to 16 or 32 tokens or
    eager beyond the largest bucket; every prompt's logits and next decode step as alone."""
    import torch

    ex = torch_executor(gpt2_tiny_checkpoint, 16)
    shape = (ex.layers, 4, ex.heads, 32, ex.head_dim)
    ex._prefill_k, ex._prefill_v = torch.zeros(shape), torch.zeros(shape)
    for b in (1, 2, 4):
        for s in (16, 32):
            g = _EagerGraph(ex, b, s)
            ex._prefill_graphs[(b, s)] = (g, g.io, g.logits)
    picked = prompt_ids[:11]
    assert max(map(len, picked)) > 32 and min(map(len, picked)) <= 16  # every path: 16, 32 and eager
    slots = list(range(10, -1, -1))
    together = ex.prefill_batch(slots, picked)
    steps = ex.decode(slots, [7] * len(slots))
    for i, ids in enumerate(picked):
        alone = torch_executor(gpt2_tiny_checkpoint, 1)
        np.testing.assert_allclose(together[i], alone.prefill(0, ids), atol=2e-4)
        np.testing.assert_allclose(steps[i], alone.decode([0], [7])[0], atol=2e-4)


def test_prefill_buckets_cover_the_prompt_limit():
    from trtserve_backend.generation.torch_executor import prefill_buckets

    assert prefill_buckets(64, 512, 1024) == ((1, 2, 4, 8), (16, 32, 64, 128, 256, 512))
    assert prefill_buckets(4, 100, 1024) == ((1, 2, 4), (16, 32, 64, 128))
    assert prefill_buckets(2, 512, 96) == ((1, 2), (16, 32, 64, 96))  # never past the positions
    assert prefill_buckets(8, 10, 1024) == ((1, 2, 4, 8), (16,))


def test_a_reused_slot_starts_from_a_fresh_cache(make_executor, prompt_ids):
    """A sequence that ends frees its slot; the next one in that slot must not see the old cache."""
    executor = make_executor(2)
    executor.prefill(0, prompt_ids[0])
    executor.decode([0], [5])
    executor.release(0)
    executor.prefill(0, prompt_ids[1])
    reused = executor.decode([0], [7])
    fresh = make_executor(2)
    fresh.prefill(0, prompt_ids[1])
    np.testing.assert_allclose(reused, fresh.decode([0], [7]), atol=1e-5)


def test_greedy_equals_hf_generate_with_joins_and_leaves(make_executor, hf, token_bytes, prompt_ids):
    """20 prompts, different lengths, different MAX_NEW_TOKENS; requests arrive while others decode."""
    model, _ = hf
    scheduler = StepScheduler(make_executor(8), token_bytes, EOS, max_sequences=64)
    cases = [(ids, 6 + (i * 7) % 17) for i, ids in enumerate(prompt_ids[:20])]
    sinks = []
    for i, (ids, n) in enumerate(cases):
        sink = ListSink()
        scheduler.submit(GenerationRequest(list(ids), n), sink)
        sinks.append(sink)
        if i % 3 == 2:
            scheduler.step()  # later requests join at step boundaries of running ones
    drain(scheduler)
    for (ids, n), sink in zip(cases, sinks):
        assert sink.error is None
        text, reason, tokens = expected(token_bytes, hf_greedy(model, ids, n))
        assert (sink.text, sink.final[1], sink.final[2]) == (text, reason, tokens)
    stats = scheduler.stats
    assert stats.prefills == 20
    assert stats.prefill_calls < stats.prefills  # prompts that joined together ran together
    assert stats.max_rows == 8  # sequences shared decode steps ...
    assert stats.decode_calls < stats.decode_rows / 3  # ... not one engine call per sequence


def test_new_request_does_not_wait_for_the_batch(make_executor, token_bytes, prompt_ids):
    scheduler = StepScheduler(make_executor(4), token_bytes, EOS, max_sequences=8)
    long_sink, short_sink = ListSink(), ListSink()
    scheduler.submit(GenerationRequest(prompt_ids[0], 40), long_sink)
    for _ in range(3):
        scheduler.step()
    scheduler.submit(GenerationRequest(prompt_ids[1], 2), short_sink)
    scheduler.step()
    scheduler.step()
    assert short_sink.final is not None and short_sink.final[2] == 2
    assert long_sink.final is None  # still decoding; the short one joined and left


def test_seeded_sampling_is_reproducible_across_batch_company(make_executor, token_bytes, prompt_ids):
    def run(company):
        scheduler = StepScheduler(make_executor(8), token_bytes, EOS, max_sequences=16)
        sink = ListSink()
        scheduler.submit(GenerationRequest(prompt_ids[0], 12, SamplingParams(temperature=1.0, top_p=0.9, seed=5)), sink)
        for ids in prompt_ids[1:1 + company]:
            scheduler.submit(GenerationRequest(ids, 12, SamplingParams(temperature=1.0)), ListSink())
        drain(scheduler)
        return sink.text, sink.final

    alone = run(0)
    assert run(5) == alone
    assert run(0) == alone


def test_stop_and_eos_end_with_their_reason(make_executor, hf, token_bytes, prompt_ids):
    model, _ = hf
    ids = prompt_ids[2]
    greedy = hf_greedy(model, ids, 12)
    full = token_bytes.decode(greedy)
    # STOP: a string that appears in the greedy continuation
    stop = full[len(full) // 2:len(full) // 2 + 3]
    scheduler = StepScheduler(make_executor(2), token_bytes, EOS, max_sequences=4)
    sink = ListSink()
    scheduler.submit(GenerationRequest(ids, 12, stops=(stop,)), sink)
    drain(scheduler)
    assert sink.final[1] == contract.FINISH_STOP
    assert sink.text == full[:full.index(stop)]
    # EOS: declare the 5th greedy token the end-of-sequence token of this scheduler
    eos = greedy[4]
    scheduler = StepScheduler(make_executor(2), token_bytes, eos, max_sequences=4)
    sink = ListSink()
    scheduler.submit(GenerationRequest(ids, 12), sink)
    drain(scheduler)
    first = greedy.index(eos)
    assert sink.final[1:] == (contract.FINISH_EOS, first + 1)
    assert sink.text == token_bytes.decode(greedy[:first])


def test_capacity_and_cancellation_free_sequences(make_executor, token_bytes, prompt_ids):
    executor = make_executor(2)
    scheduler = StepScheduler(executor, token_bytes, EOS, max_sequences=3)
    sinks = [ListSink() for _ in range(3)]
    for sink in sinks:
        scheduler.submit(GenerationRequest(prompt_ids[0], 30), sink)
    with pytest.raises(CapacityError, match="max_sequences 3"):
        scheduler.submit(GenerationRequest(prompt_ids[0], 30), ListSink())
    scheduler.step()  # two decode (max_batch 2), one waits
    sinks[0].gone = True  # its client disconnected
    scheduler.step()
    assert scheduler.stats.cancelled == 1 and scheduler.pending() == 2
    scheduler.submit(GenerationRequest(prompt_ids[1], 3), ListSink())  # the freed place is usable
    drain(scheduler)
    assert sinks[0].final is None and all(s.final[1] == contract.FINISH_LENGTH for s in sinks[1:])


def test_decode_step_argmax_and_wanted_logits_equal_decode(make_executor, prompt_ids):
    """The engine's argmax (on the device for torch) is np.argmax of the logits decode returns,
    row for row in slot order, and only the rows asked for bring logits back."""
    ex_a, ex_b = make_executor(4), make_executor(4)
    for ex in (ex_a, ex_b):
        for slot, ids in enumerate(prompt_ids[:3]):
            ex.prefill(slot, ids)
    slots, tokens = [2, 0, 1], [33, 11, 22]
    logits = ex_a.decode(slots, tokens)
    best, wanted = ex_b.decode_step(slots, tokens, [False, True, False])
    assert best.tolist() == np.argmax(logits, axis=1).tolist()
    assert wanted.shape == (1, logits.shape[1])
    np.testing.assert_allclose(wanted[0], logits[1], atol=1e-5)
    best, none = ex_a.decode_step(slots, [5, 6, 7], [False] * 3)
    assert none.shape[0] == 0 and best.shape == (3,)


def test_greedy_and_sampled_exact_through_the_outbox(make_executor, hf, token_bytes, prompt_ids):
    """With the outbox thread delivering (pieces of a lagging stream joined), every stream's text,
    reason and count are what they are without it; a seeded sampled stream is unchanged too."""
    from trtserve_backend.generation.outbox import Outbox

    model, _ = hf
    cases = [(ids, 5 + (i * 5) % 11) for i, ids in enumerate(prompt_ids[:8])]

    def run(outbox):
        scheduler = StepScheduler(make_executor(4), token_bytes, EOS, max_sequences=16, outbox=outbox)
        if outbox is not None:
            outbox.start()
        sinks = [ListSink() for _ in cases]
        for (ids, n), sink in zip(cases, sinks):
            scheduler.submit(GenerationRequest(list(ids), n), sink)
        sampled = ListSink()
        scheduler.submit(GenerationRequest(list(prompt_ids[9]), 10, SamplingParams(temperature=0.8, seed=3)), sampled)
        drain(scheduler)
        if outbox is not None:
            outbox.stop()
        return sinks, sampled

    direct, direct_sampled = run(None)
    queued, queued_sampled = run(Outbox(cancel_poll_s=0.001))
    for (ids, n), a, b in zip(cases, direct, queued):
        text, reason, tokens = expected(token_bytes, hf_greedy(model, ids, n))
        assert (a.text, a.final[1:]) == (b.text, b.final[1:]) == (text, (reason, tokens))
    assert (queued_sampled.text, queued_sampled.final) == (direct_sampled.text, direct_sampled.final)


def test_ort_graph_leaves_a_core_to_the_responses_by_default(gpt2_tiny_onnx):
    import os

    from trtserve_backend.generation.ort_executor import OrtDecoderGraph, default_intra_op_threads

    cores = len(os.sched_getaffinity(0))
    assert default_intra_op_threads() == max(1, cores - 1)
    graph = OrtDecoderGraph(str(gpt2_tiny_onnx))
    assert graph.session.get_session_options().intra_op_num_threads == max(1, cores - 1)
    assert OrtDecoderGraph(str(gpt2_tiny_onnx), intra_op_threads=3).session.get_session_options().intra_op_num_threads == 3
