"""Each prompt prefilled once whatever num_samples (engine/prefix.py): the same tokens as a prefill per row,
and the prompt tokens each model runs counted in SchedulerStats."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.api.model import StreamRow
from os_cli.engine import prefix, scheduler
from os_cli.engine.scheduler import SchedulerStats
from os_cli.mix import rng

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus"]
HINTED = ["What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom has 4 apples"]


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def _decode(model, requests, limit, share, lookahead=None, **settings):
    call = model._call_settings("mixture", None, True, None, temperature=1.0, top_k=-1, top_p=1.0, ignore_eos=False,
                                max_new_tokens=6, **settings)
    decode = dataclasses.replace(call.decode, share_prompts=share, lookahead=lookahead)
    stats = SchedulerStats()
    out = {r.index: r for r in scheduler.decode_rows(
        requests, model.model_theta, model.model_t, model.vocab_size, model._step_fn(decode.config, "mixture"),
        decode, limit=limit, stats=stats)}
    return out, stats


def _requests(model, n):
    ids = [model._token_ids(p, "prompts", i) for i, p in enumerate(PROMPTS)]
    ids_t = [model._token_ids(p, "prompts_t", i, teacher=True) for i, p in enumerate(HINTED)]
    seeds = [rng.sample_seed(100 + i, k) for i in range(len(PROMPTS)) for k in range(n)]
    keys = rng.row_keys(torch.tensor(seeds)).tolist()
    return [scheduler.RowRequest(j, ids[j // n], ids_t[j // n], keys[j]) for j in range(len(seeds))], ids, ids_t


@pytest.mark.parametrize("limit", [1, 2, 4, 12])
def test_shared_prefills_give_the_tokens_of_a_prefill_per_row(pair, limit):
    n = 4
    requests, ids, ids_t = _requests(pair, n)
    shared, stats = _decode(pair, requests, limit, True, keep_logits=True)
    alone, stats_alone = _decode(pair, requests, limit, False, keep_logits=True)
    assert sorted(shared) == sorted(alone) == list(range(len(requests)))
    for i in shared:
        assert shared[i].tokens.tolist() == alone[i].tokens.tolist(), i
        assert shared[i].finish_reason == alone[i].finish_reason
        for side in ("theta", "t"):
            torch.testing.assert_close(shared[i].logits[side], alone[i].logits[side], atol=1e-4, rtol=1e-4)
    # Each prompt ran once through each model (samples come prompt-major, as num_samples orders them) ...
    assert stats.prompt_tokens_theta == sum(map(len, ids))
    assert stats.prompt_tokens_t == sum(map(len, ids_t))
    # ... against n times without sharing.
    assert stats_alone.prompt_tokens_theta == n * sum(map(len, ids))
    assert stats_alone.prompt_tokens_t == n * sum(map(len, ids_t))
    # The samples of one prompt still differ (own seeds, own KV copies from the first token on).
    assert len({tuple(shared[i].tokens.tolist()) for i in range(n)}) > 1


def test_num_samples_refill_equals_the_static_loop_that_prefills_every_row(pair):
    for batch_size in (2, 5):
        refill = pair.generate(PROMPTS, HINTED, max_new_tokens=6, seed=3, num_samples=3, batch_size=batch_size)
        static = pair.generate(PROMPTS, HINTED, max_new_tokens=6, seed=3, num_samples=3, batch_size=batch_size,
                               loop="static")
        assert torch.equal(refill.generated_ids, static.generated_ids)
        assert refill.finish_reasons == static.finish_reasons


def test_stream_counts_prompt_tokens_once_per_prompt_and_fixed_slots_agree(tiny_models):
    rows = [StreamRow(p, t, seed=s) for p, t in zip(PROMPTS, HINTED) for s in (1, 2, 3)]
    outputs = {}
    for compile in (False, "static"):
        model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu",
                                     dtype=torch.float32, compile=compile)
        stats = SchedulerStats()
        outputs[compile] = {o.index: o.token_ids.tolist()
                            for o in model.generate_stream(rows, max_new_tokens=5, limit=4, stats=stats)}
        lengths = [len(model._token_ids(p, "prompts", 0)) for p in PROMPTS]
        lengths_t = [len(model._token_ids(p, "prompts_t", 0, teacher=True)) for p in HINTED]
        assert (stats.prompt_tokens_theta, stats.prompt_tokens_t) == (sum(lengths), sum(lengths_t))
    assert outputs[False] == outputs["static"]


def test_store_keeps_only_what_it_is_told(pair):
    store = prefix.PromptStore()
    rows = [[5, 6, 7], [5, 6, 7], [8, 9]]
    stream, logits, ran = prefix.prefill_rows(pair.model_theta, pair.vocab_size, rows, 0, "cpu", store,
                                              keep={(8, 9)})
    assert ran == [(5, 6, 7), (8, 9)] and list(store.entries) == [(8, 9)]
    assert stream.attention_mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1]]
    torch.testing.assert_close(logits[0], logits[1])
    again, logits_again, ran_again = prefix.prefill_rows(pair.model_theta, pair.vocab_size, [[8, 9]], 0, "cpu",
                                                         store)
    assert ran_again == [] and again.attention_mask.tolist() == [[1, 1]]
    torch.testing.assert_close(logits_again[0], logits[2])


def test_one_model_stacked_rows_share_prefills_too(tiny_models):
    """One model with its own teacher prompts (stacked pairs, engine/stacked.py): each distinct prompt runs once,
    counted on its side, and the samples give what the same weights loaded twice (no stacking) give."""
    import shutil
    import tempfile

    one = OptimalSamplingModel(tiny_models["theta"], device="cpu", dtype=torch.float32)
    copy = shutil.copytree(tiny_models["theta"], tempfile.mkdtemp() + "/copy")
    two = OptimalSamplingModel(tiny_models["theta"], copy, device="cpu", dtype=torch.float32)
    rows = [StreamRow(p, t, seed=s) for p, t in zip(PROMPTS, HINTED) for s in (1, 2, 3)]
    got, stats = {}, {}
    for name, model in (("one", one), ("two", two)):
        stats[name] = SchedulerStats()
        got[name] = {o.index: o.token_ids.tolist() for o in model.generate_stream(
            rows, max_new_tokens=5, limit=2, stats=stats[name], separate_teacher_prompts=True)}
    assert got["one"] == got["two"]
    lengths = sum(len(one._token_ids(p, "prompts", 0)) for p in PROMPTS)
    lengths_t = sum(len(one._token_ids(p, "prompts_t", 0, teacher=True)) for p in HINTED)
    for s in stats.values():
        assert (s.prompt_tokens_theta, s.prompt_tokens_t) == (lengths, lengths_t)
    assert stats["one"].teacher_forwards == 0 < stats["two"].teacher_forwards


@pytest.mark.parametrize("limit", [1, 3])
def test_repeated_prompts_out_of_order_still_share_one_prefill(pair, limit):
    # The samples of each prompt arrive interleaved with other prompts' (p0, p1, p2, p0, ...), all with one cap:
    # among equal caps admission takes the prompt admitted last first (admission.py), so each prompt runs once.
    n = 3
    requests, ids, ids_t = _requests(pair, n)
    interleaved = [requests[p * n + k] for k in range(n) for p in range(len(PROMPTS))]
    window = len(interleaved)  # every sample in sight (the default, 4 x limit, sees them at limit >= 3)
    shared, stats = _decode(pair, interleaved, limit, True, lookahead=window)
    alone, _ = _decode(pair, interleaved, limit, False, lookahead=window)
    assert {i: r.tokens.tolist() for i, r in shared.items()} == {i: r.tokens.tolist() for i, r in alone.items()}
    assert (stats.prompt_tokens_theta, stats.prompt_tokens_t) == (sum(map(len, ids)), sum(map(len, ids_t)))
