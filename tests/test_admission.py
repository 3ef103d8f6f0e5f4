"""Admission order and the alpha warm start in the refill loop (os_cli/scheduler.py), on real tiny models.

A row's output must not depend on when it was admitted: longest-first admission gives every row
exactly the tokens of input-order admission, the window read ahead stays bounded on an endless
stream, evictions and OOM back-off still restart rows unchanged, and each row's previous alpha
reaches the solver as its warm start (NaN for a row's first token)."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from os_cli import OptimalSamplingModel

from os_cli.mix import rng

from os_cli.engine import admission as admission_policy, scheduler
from os_cli.engine.scheduler import InFlightLimit, RowRequest, SchedulerStats
from os_cli.engine.settings import DecodeSettings

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus",
           "Tom has 4 apples", "Question 12: 12 plus", "Explain", "The capital of France", "a b c d e f g"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom", "Hi there",
             "Answer briefly.", "The quick brown fox", "Paris", "x"]
# Long rows at the end of the input: in input order they would drain alone.
CAPS = [3, 2, 1, 4, 2, 3, 14, 13]


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def _request(model, i: int, cap: int | None = None, seed: int | None = None) -> RowRequest:
    p, pt = PROMPTS[i % len(PROMPTS)], PROMPTS_T[i % len(PROMPTS)]
    key = int(rng.row_keys(torch.tensor([100 + i if seed is None else seed]))[0])
    return RowRequest(i, model._token_ids(p, "prompts", 0), model._token_ids(pt, "prompts_t", 0, teacher=True), key,
                      CAPS[i % len(CAPS)] if cap is None else cap)


def _decode(model, requests, step_fn=None, *, limit, stats=None, **settings):
    config = model._sampler_config(1.0, -1, 1.0)
    settings.setdefault("max_new_tokens", max(CAPS))
    return scheduler.decode_rows(
        requests, model.model_theta, model.model_t, model.vocab_size, step_fn or model._step_fn(config, "mixture"),
        DecodeSettings(config=config, eos_ids=(), pad_id=model.tokenizer.pad_token_id, **settings), limit=limit,
        stats=stats)


def _by_index(results):
    return {r.index: r for r in results}


def _assert_same_rows(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for i in a:
        assert a[i].tokens.tolist() == b[i].tokens.tolist(), i
        assert a[i].finish_reason == b[i].finish_reason
        for name in ("alpha", "logprob_q", "kl_t", "ess_ratio"):
            torch.testing.assert_close(a[i].traces[name], b[i].traces[name], atol=2e-5, rtol=1e-4, msg=name)


def test_longest_first_gives_every_row_its_input_order_tokens_in_fewer_steps(pair):
    requests = [_request(pair, i) for i in range(len(PROMPTS))]
    stats = {name: SchedulerStats() for name in scheduler.ADMISSIONS}
    got = {name: _by_index(_decode(pair, iter(requests), limit=3, admit_min=1, admission=name, stats=stats[name]))
           for name in scheduler.ADMISSIONS}
    _assert_same_rows(got["longest_first"], got["input_order"])
    assert [len(got["input_order"][i].tokens) for i in range(len(CAPS))] == CAPS
    # The two long rows start first instead of last: the batch no longer drains around them.
    assert stats["longest_first"].steps < stats["input_order"].steps
    assert stats["longest_first"].occupancy(3) > stats["input_order"].occupancy(3)
    assert stats["longest_first"].tokens == stats["input_order"].tokens == sum(CAPS)


def test_longest_first_admits_the_largest_cap_then_input_order(pair):
    order = []

    def step_fn(logits_theta, logits_t, keys, steps, alpha_init=None):
        if alpha_init is None:  # a prefill: the rows being admitted, in batch order
            order.extend(keys.tolist())
        return base(logits_theta, logits_t, keys, steps, alpha_init)

    base = pair._step_fn(pair._sampler_config(1.0, -1, 1.0), "mixture")
    caps = [2, 5, 9, 5, 9, 1]  # no cap (None) counts as the run's max_new_tokens, 9
    requests = [_request(pair, i, cap=c) for i, c in enumerate(caps)]
    requests[4].max_new_tokens = None
    key_row = {r.key: r.index for r in requests}
    list(_decode(pair, iter(requests), step_fn, limit=1, max_new_tokens=9, lookahead=len(caps)))
    assert [key_row[k] for k in order] == [2, 4, 1, 3, 0, 5]


def test_among_the_longest_rows_the_prompt_taken_last_goes_first():
    # (prompt, cap) per input row: the cap decides first (longest first); among rows of the largest cap, one
    # with the prompt admitted last goes before input order, so one prefill serves both (engine/prefix.py).
    rows = [("a", 5), ("b", 5), ("a", 5), ("c", 9), ("b", 5), ("c", 1)]
    waiting = admission_policy.Waiting(iter(rows), "longest_first", len(rows), cap=lambda r: r[1],
                                       accept=lambda r: r, prompt=lambda r: r[0])
    assert [waiting.take()[0] for _ in rows] == [3, 0, 2, 1, 4, 5]
    assert waiting.take() is None and waiting.done and not waiting._prompts  # no key kept for rows gone
    plain = admission_policy.Waiting(iter(rows), "longest_first", len(rows), cap=lambda r: r[1], accept=lambda r: r)
    assert [plain.take()[0] for _ in rows] == [3, 0, 1, 2, 4, 5]  # without prompt keys: input order among ties


def test_an_endless_stream_is_read_a_bounded_window_ahead(pair):
    for admission, lookahead, ahead in (("longest_first", 3, 3), ("longest_first", None, 4 * 2),
                                        ("input_order", None, 0)):
        pulled = []

        def endless():
            for i in itertools.count():
                pulled.append(i)
                yield _request(pair, i % len(PROMPTS), cap=1 + (7 * i) % 5, seed=i)

        results = _decode(pair, endless(), limit=2, max_new_tokens=5, admission=admission, lookahead=lookahead)
        for done, _ in enumerate(itertools.islice(results, 12), start=1):
            # rows read = finished + in flight (<= limit) + waiting (<= the window), never more
            assert len(pulled) <= done + 2 + ahead, (admission, done, len(pulled))
        assert len(pulled) > done  # it did read ahead of the rows it finished
        results.close()


@pytest.mark.parametrize("admission", scheduler.ADMISSIONS)
def test_evicted_rows_wait_at_their_position_and_restart_unchanged(pair, admission):
    requests = [_request(pair, i) for i in range(len(PROMPTS))]
    reference = _by_index(_decode(pair, iter(requests), limit=8, admission="input_order"))
    limit = InFlightLimit(5)
    got = {}
    for result in _decode(pair, iter(requests), limit=limit, admission=admission, admit_min=1):
        got[result.index] = result
        limit.lower(2)  # rows beyond the first 2 go back to waiting and restart from scratch
    assert limit.value == 2
    _assert_same_rows(got, reference)


@pytest.mark.parametrize("admission", scheduler.ADMISSIONS)
def test_out_of_memory_back_off_under_either_admission_changes_no_row(pair, admission, monkeypatch):
    requests = [_request(pair, i) for i in range(len(PROMPTS))]
    reference = _by_index(_decode(pair, iter(requests), limit=8, admission="input_order"))
    real_forward = pair.model_t.forward

    @functools.wraps(real_forward)
    def forward(*args, **kwargs):  # the real model, failing like a GPU that fits only 2 rows
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pair.model_t, "forward", forward)
    limit = InFlightLimit(6)
    got = _by_index(_decode(pair, iter(requests), limit=limit, admission=admission, oom_backoff=True))
    assert limit.value <= 2 and limit.backoffs
    _assert_same_rows(got, reference)


def test_generate_returns_rows_in_input_order_under_longest_first(pair):
    seeds = [100 + i for i in range(len(PROMPTS))]
    out = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=CAPS, seed=seeds, batch_size=3)
    assert out.lengths.tolist() == CAPS
    rows = _by_index(_decode(pair, iter([_request(pair, i) for i in range(len(PROMPTS))]), limit=3,
                             admission="input_order"))
    for i, cap in enumerate(CAPS):
        assert out.generated_ids[i, :cap].tolist() == rows[i].tokens.tolist()
        assert out.generated_texts[i] == pair.tokenizer.decode(rows[i].tokens, skip_special_tokens=True)


def test_bad_admission_arguments(pair):
    requests = [_request(pair, 0)]
    with pytest.raises(ValueError, match="admission must be one of longest_first, input_order"):
        list(_decode(pair, iter(requests), limit=2, admission="shortest"))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="lookahead must be a positive integer"):
            list(_decode(pair, iter(requests), limit=2, lookahead=bad))


def test_each_row_carries_its_previous_alpha_into_the_next_step(pair):
    """The solver's warm start: a row's alpha_init at step n is its own alpha_solved at step n - 1
    (NaN never reaches a plain step: the prefill solved step 0), through joins, leaves and evictions."""
    base = pair._step_fn(pair._sampler_config(1.0, -1, 1.0), "mixture")
    solved, given, prefills = {}, {}, []

    def step_fn(logits_theta, logits_t, keys, steps, alpha_init=None):
        out = base(logits_theta, logits_t, keys, steps, alpha_init)
        if alpha_init is None:
            prefills.append(steps.tolist())
        for j, (k, s) in enumerate(zip(keys.tolist(), steps.tolist())):
            solved[k, s] = float(out.alpha_solved[j])
            if alpha_init is not None:
                given[k, s] = float(alpha_init[j])
        return out

    requests = [_request(pair, i) for i in range(len(PROMPTS))]
    limit = InFlightLimit(4)
    results = []
    for result in _decode(pair, iter(requests), step_fn, limit=limit, admit_min=1):
        results.append(result)
        if len(results) == 2:
            limit.lower(3)
    assert all(s == 0 for batch in prefills for s in batch)  # the first token is a cold start
    assert len(given) == sum(CAPS) - len(CAPS)
    for (k, s), a in given.items():
        assert s >= 1 and not math.isnan(a) and a == solved[k, s - 1], (k, s)
    reference = _by_index(_decode(pair, iter(requests), limit=8, admission="input_order"))
    _assert_same_rows(_by_index(results), reference)


def test_one_model_with_a_warm_start_reports_the_conventional_half(tiny_models):
    """pi_theta = pi_t on every token: every alpha is a root; the warm start must not carry the
    previous alpha along (fastmix detects r = 0), so each token reports 0.5 clamped, as the reference."""
    one = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)
    for bounds in ((0.0, 1.0), (0.6, 0.9)):
        out = one.generate(["Hi", "Tom has 4 apples"], max_new_tokens=6, seed=3, ignore_eos=True,
                           alpha={"method": "kl_symmetry", "min": bounds[0], "max": bounds[1]})
        expected = min(max(0.5, bounds[0]), bounds[1])
        torch.testing.assert_close(out.alpha_values, torch.full_like(out.alpha_values, expected), atol=1e-6, rtol=0)
