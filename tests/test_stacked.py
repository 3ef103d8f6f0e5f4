"""One model with teacher prompts of its own: one stacked forward of 2B rows per step (engine/stacked.py), the
same tokens as two streams over the same weights, refilled, speculative, fixed slots and OOM back-off."""

from __future__ import annotations

import dataclasses
import functools
import shutil

import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.api.model import StreamRow
from os_cli.engine import scheduler
from os_cli.engine.scheduler import InFlightLimit, SchedulerStats
from os_cli.mix import rng

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus",
           "Tom has 4 apples", "Question 12: 12 plus", "Explain"]
HINTED = ["What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom", "Tom has 4 apples. Hint: 4",
          "Answer briefly. Question 12: 12 plus", "x"]
CAPS = [3, 9, 1, 7, 5, 9]


@pytest.fixture(scope="module")
def one(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)


def _decode(model, limit, stack, draft_tokens=0, keep_logits=True):
    call = model._call_settings("mixture", None, True, None, temperature=1.0, top_k=-1, top_p=1.0, ignore_eos=False,
                                max_new_tokens=max(CAPS), draft_tokens=draft_tokens, keep_logits=keep_logits)
    decode = dataclasses.replace(call.decode, stack_one_model=stack)
    keys = rng.row_keys(torch.arange(20, 20 + len(PROMPTS))).tolist()
    requests = [scheduler.RowRequest(i, model._token_ids(p, "prompts", i), model._token_ids(t, "prompts_t", i), k, c)
                for i, (p, t, k, c) in enumerate(zip(PROMPTS, HINTED, keys, CAPS))]
    stats = SchedulerStats()
    out = {r.index: r for r in scheduler.decode_rows(
        requests, model.model_theta, model.model_t, model.vocab_size, model._step_fn(decode.config, "mixture"),
        decode, limit=limit, stats=stats)}
    return out, stats


def _assert_same(a, b):
    assert sorted(a) == sorted(b) == list(range(len(PROMPTS)))
    for i in a:
        assert a[i].tokens.tolist() == b[i].tokens.tolist(), i
        assert a[i].finish_reason == b[i].finish_reason
        for side in ("theta", "t"):
            torch.testing.assert_close(a[i].logits[side], b[i].logits[side], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("draft_tokens", [0, 2])
def test_stacked_equals_two_streams_batched_unbatched_and_refilled(one, draft_tokens):
    reference, ref_stats = _decode(one, 1, False, draft_tokens)  # two streams, one row at a time
    for limit in (1, 2, 6):
        stacked, stats = _decode(one, limit, True, draft_tokens)
        _assert_same(stacked, reference)
        assert stats.teacher_forwards == 0 and stats.theta_forwards > 0  # one forward serves both prompts
        assert stats.prompt_tokens_t == ref_stats.prompt_tokens_t > 0
        assert stats.prompt_tokens_theta == ref_stats.prompt_tokens_theta > 0
    two, two_stats = _decode(one, 2, False, draft_tokens)
    _assert_same(two, reference)
    assert two_stats.teacher_forwards > 0


def test_one_model_api_runs_one_forward_per_step_and_matches_a_copy(one, tiny_models, tmp_path):
    copy = OptimalSamplingModel(str(shutil.copytree(tiny_models["theta"], tmp_path / "copy")), tiny_models["theta"],
                                device="cpu", dtype=torch.float32)
    assert copy.model_t is not copy.model_theta
    calls = []
    hook = one.model_theta.register_forward_hook(lambda module, args, kwargs, out: calls.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        got = one.generate(PROMPTS, HINTED, max_new_tokens=6, seed=7, batch_size=6, ignore_eos=True)
    finally:
        hook.remove()
    want = copy.generate(PROMPTS, HINTED, max_new_tokens=6, seed=7, batch_size=6, ignore_eos=True)
    assert torch.equal(got.generated_ids, want.generated_ids)
    assert calls == [12] * 6  # the prefill and 5 steps, each one forward of 2 x 6 rows


def test_stacked_fixed_slots_and_oom_backoff_give_the_same_tokens(one, tiny_models, monkeypatch):
    rows = [StreamRow(p, t, seed=s, max_new_tokens=c) for p, t, s, c in zip(PROMPTS, HINTED, range(6), CAPS)]
    want = {o.index: o.token_ids.tolist() for o in one.generate_stream(rows, max_new_tokens=max(CAPS), limit=3,
                                                                        separate_teacher_prompts=True)}
    slots = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32, compile="static")
    got = {o.index: o.token_ids.tolist() for o in slots.generate_stream(rows, max_new_tokens=max(CAPS), limit=3,
                                                                         separate_teacher_prompts=True)}
    assert got == want
    assert slots._slot_pool and all(f.teacher is None and f.theta.slots == 6 for f in slots._slot_pool.values())

    real_forward = one.model_theta.forward

    @functools.wraps(real_forward)  # keeps the signature: the engine picks the cache keyword from it
    def forward(*args, **kwargs):  # the real model, failing like a GPU that fits only 2 pairs (4 rows)
        if kwargs["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(one.model_theta, "forward", forward)
    limit = InFlightLimit(6)
    got = {o.index: o.token_ids.tolist() for o in one.generate_stream(
        rows, max_new_tokens=max(CAPS), limit=limit, oom_backoff=True, separate_teacher_prompts=True)}
    assert got == want
    assert limit.value <= 2 and limit.backoffs
