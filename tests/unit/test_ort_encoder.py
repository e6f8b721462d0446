"""The CPU engine (ONNX Runtime) and the batching helpers every encoder shares.

A tiny row-independent model is exported to ONNX here, so the tests need no built artifacts.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trtserve_contract as contract  # noqa: E402
from trtserve_backend.batching import check_merge, pad_merge, plan_batches, split_rows  # noqa: E402
from trtserve_backend.ort_encoder import OrtEncoder, trim_padding  # noqa: E402

from .test_torch_engine import NAMES, RowModel, feeds  # noqa: E402

KEY = contract.INPUT_IDS


def test_plan_batches_pad_and_group():
    reqs = [feeds(1, 8), feeds(2, 16), feeds(3, 8)]
    assert plan_batches(reqs, KEY, "pad") == {16: [0, 1, 2]}
    assert plan_batches(reqs, KEY, "group") == {8: [0, 2], 16: [1]}
    with pytest.raises(ValueError, match="merge 'sorted'"):
        plan_batches(reqs, KEY, "sorted")
    with pytest.raises(ValueError, match="known"):
        check_merge("")


def test_pad_merge_right_pads_with_zeros_and_keeps_rows():
    a, b = feeds(1, 8, 1), feeds(2, 16, 2)
    merged = pad_merge([a, b], NAMES, 16)
    for name in NAMES:
        assert merged[name].shape == (3, 16) and merged[name].dtype == a[name].dtype
        np.testing.assert_array_equal(merged[name][0, :8], a[name][0])
        assert not merged[name][0, 8:].any()
        np.testing.assert_array_equal(merged[name][1:], b[name])


def test_pad_merge_passes_one_request_of_the_right_length_through():
    a = feeds(2, 8)
    assert pad_merge([a], NAMES, 8) is a
    assert pad_merge([a], NAMES, 16)[KEY].shape == (2, 16)


def test_split_rows_hands_each_request_its_rows():
    reqs = [feeds(1, 8), feeds(3, 8), feeds(2, 8)]
    results = [None] * 4
    split_rows(np.arange(6), reqs, [0, 1, 2], KEY, results)
    assert [list(r) for r in results[:3]] == [[0], [1, 2, 3], [4, 5]] and results[3] is None


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    torch.manual_seed(0)
    model = RowModel().eval()
    path = tmp_path_factory.mktemp("ort") / "row.onnx"
    example = tuple(torch.from_numpy(v) for v in feeds(2, 8).values())
    axes = {name: {0: "batch", 1: "sequence"} for name in NAMES}
    torch.onnx.export(model, example, str(path), input_names=list(NAMES), output_names=["out"],
                      dynamic_axes={**axes, "out": {0: "batch"}}, opset_version=17, dynamo=False)
    return model, str(path)


def reference(model, f):
    with torch.no_grad():
        return model(*(torch.from_numpy(f[n]) for n in NAMES)).numpy()


@pytest.mark.parametrize("merge", ["group", "pad"])
def test_run_requests_of_mixed_lengths_keep_order_and_results(onnx_model, merge):
    model, path = onnx_model
    encoder = OrtEncoder(path, NAMES, "out", intra_op_threads=1, merge=merge)
    reqs = [feeds(1, 8, 1), feeds(2, 16, 2), feeds(3, 8, 3), feeds(1, 16, 4)]
    outs = encoder.run_requests(reqs)
    assert [o.shape for o in outs] == [(1, 4), (2, 4), (3, 4), (1, 4)]
    for f, out in zip(reqs, outs):
        np.testing.assert_allclose(out, reference(model, f), rtol=1e-5, atol=1e-6)


def test_large_batches_run_in_slices_with_the_same_result(onnx_model):
    model, path = onnx_model
    whole = OrtEncoder(path, NAMES, "out", intra_op_threads=1)
    sliced = OrtEncoder(path, NAMES, "out", intra_op_threads=1, max_rows_per_run=3)
    reqs = [feeds(5, 8, 1), feeds(2, 8, 2)]
    calls = []
    real_run = sliced.session.run
    sliced.session.run = lambda names, f: calls.append(len(f[NAMES[0]])) or real_run(names, f)
    for a, b in zip(whole.run_requests(reqs), sliced.run_requests(reqs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert calls == [3, 3, 1]  # 7 rows of one length, at most 3 per run


def test_batches_run_without_the_columns_no_row_uses(onnx_model):
    model, path = onnx_model
    encoder = OrtEncoder(path, NAMES, "out", intra_op_threads=1)
    assert encoder.trim_padding  # [batch, hidden] output, an attention mask among the inputs
    a, b = feeds(2, 16, 1), feeds(1, 16, 2)
    for f in (a, b):  # bucket padding beyond every row of the batch
        f[contract.ATTENTION_MASK][:, 5:] = 0
        f[KEY][:, 5:] = 0
    widths = []
    real_run = encoder.session.run
    encoder.session.run = lambda names, f: widths.append(f[KEY].shape[1]) or real_run(names, f)
    outs = encoder.run_requests([a, b])
    longest = max(int(f[contract.ATTENTION_MASK].sum(axis=1).max()) for f in (a, b))
    assert widths == [longest] and longest <= 5
    for f, out in zip((a, b), outs):
        np.testing.assert_allclose(out, reference(model, f), rtol=1e-5, atol=1e-6)


def test_trim_padding_keeps_full_batches_and_makes_contiguous_arrays():
    f = feeds(3, 8, 4)
    f[contract.ATTENTION_MASK][:] = 1
    assert trim_padding(f, NAMES) is f
    f[contract.ATTENTION_MASK][:, 6:] = 0
    cut = trim_padding(f, NAMES)
    assert all(cut[n].shape == (3, 6) and cut[n].flags.c_contiguous for n in NAMES)
    np.testing.assert_array_equal(cut[KEY], f[KEY][:, :6])
    f[contract.ATTENTION_MASK][:] = 0  # no tokens at all: one column stays
    assert trim_padding(f, NAMES)[KEY].shape == (3, 1)


class TokenModel(torch.nn.Module):
    """An output per token ([batch, sequence, hidden], as QA and NER graphs have)."""

    def __init__(self):
        super().__init__()
        self.row = RowModel()

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.row.embedding(input_ids) + self.row.types(token_type_ids)
        return h * attention_mask.unsqueeze(-1).float()


def test_outputs_per_token_keep_the_full_width(tmp_path):
    path = tmp_path / "tokens.onnx"
    example = tuple(torch.from_numpy(feeds(2, 8)[n]) for n in NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in NAMES}
    torch.onnx.export(TokenModel().eval(), example, str(path), input_names=list(NAMES), output_names=["out"],
                      dynamic_axes={**axes, "out": {0: "batch", 1: "sequence"}}, opset_version=17, dynamo=False)
    encoder = OrtEncoder(str(path), NAMES, "out", intra_op_threads=1)
    assert not encoder.trim_padding
    f = feeds(2, 16, 3)
    f[contract.ATTENTION_MASK][:, 4:] = 0
    assert encoder.run_requests([f])[0].shape == (2, 16, 4)


@pytest.mark.parametrize("spinning, flag", [(True, "1"), (False, "0")])
def test_thread_spinning_reaches_the_session_and_results_do_not_change(onnx_model, spinning, flag):
    model, path = onnx_model
    encoder = OrtEncoder(path, NAMES, "out", intra_op_threads=2, thread_spinning=spinning)
    options = encoder.session.get_session_options()
    assert options.intra_op_num_threads == 2
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == flag
    # spinning or not, threads stop spinning when a run returns
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    f = feeds(3, 16, 5)
    np.testing.assert_allclose(encoder.run_requests([f])[0], reference(model, f), rtol=1e-5, atol=1e-6)


class _Recorder:
    """A session that notes each run it is asked for and hands it to the real one."""

    def __init__(self, session, name, calls):
        self.session, self.name, self.calls = session, name, calls

    def run(self, *args):
        self.calls.append(self.name)
        return self.session.run(*args)


def test_the_solo_session_runs_while_no_other_instance_is_busy(onnx_model):
    """The preferred instance's second session (every core, spinning) takes the runs while
    ``others_busy()`` is false, the instance's own the rest; same results either way."""
    model, path = onnx_model
    busy = [False]
    encoder = OrtEncoder(path, NAMES, "out", intra_op_threads=1, thread_spinning=False,
                         solo_intra_op_threads=2, others_busy=lambda: busy[0])
    solo = encoder.solo.get_session_options()
    assert solo.intra_op_num_threads == 2 and solo.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert encoder.session.get_session_options().intra_op_num_threads == 1
    assert "alone: 2 spinning" in encoder.threads
    calls: list[str] = []
    encoder.session = _Recorder(encoder.session, "own", calls)
    encoder.solo = _Recorder(encoder.solo, "solo", calls)
    f = feeds(3, 16, 5)
    expected = reference(model, f)
    for state in (False, True, False):
        busy[0] = state
        np.testing.assert_allclose(encoder.run_requests([f])[0], expected, rtol=1e-5, atol=1e-6)
    assert calls == ["solo", "own", "solo"]
    assert (encoder.runs, encoder.solo_runs) == (3, 2)
    # none asked for: one session, and no question asked
    plain = OrtEncoder(path, NAMES, "out", intra_op_threads=1, others_busy=lambda: 1 / 0)
    assert plain.solo is None
    np.testing.assert_allclose(plain.run_requests([f])[0], expected, rtol=1e-5, atol=1e-6)


def test_bad_merge_and_missing_inputs_are_named(onnx_model):
    _, path = onnx_model
    with pytest.raises(ValueError, match="merge 'sorted'"):
        OrtEncoder(path, NAMES, "out", merge="sorted")
    with pytest.raises(ValueError, match=r"lacks inputs \['position_ids'\]"):
        OrtEncoder(path, (*NAMES, "position_ids"), "out")
