"""Continuous refill on real tiny models: refilled = static reference loop = unbatched, streaming,
run-time limits, OOM back-off and pad trimming."""

from __future__ import annotations

import functools

import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.api.model import StreamRow
from os_cli.engine.streams import ModelStream
from os_cli.engine.scheduler import LOOKAHEAD_PER_SLOT, InFlightLimit, SchedulerStats
from os_cli.toy import save_tiny_model, tiny_qwen2_config

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus",
           "Tom has 4 apples", "Question 12: 12 plus", "Explain", "The capital of France", "a b c d e f g"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom", "Hi there",
             "Answer briefly.", "The quick brown fox", "Paris", "x"]
CAPS = [3, 14, 1, 9, 5, 14, 2, 7]  # long-tailed per-row caps: rows end at very different steps


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def eosy(tmp_path_factory, tiny_tokenizer):
    """One model whose generation config lists half the vocabulary as EOS: rows end at random steps."""
    from transformers import GenerationConfig

    path = save_tiny_model(tmp_path_factory.mktemp("eosy") / "m", tiny_tokenizer, tiny_qwen2_config(tiny_tokenizer),
                           seed=4, init_std=0.2)
    GenerationConfig(eos_token_id=list(range(0, len(tiny_tokenizer), 2)),
                     pad_token_id=tiny_tokenizer.pad_token_id).save_pretrained(path)
    return OptimalSamplingModel(str(path), device="cpu", dtype=torch.float32)


def _assert_rows_equal(a, b):
    """Exact tokens, finish reasons and lengths; per-token floats to float tolerance."""
    for i in range(len(a.lengths)):
        n = int(a.lengths[i])
        assert int(b.lengths[i]) == n and a.finish_reasons[i] == b.finish_reasons[i], i
        assert a.generated_ids[i, :n].tolist() == b.generated_ids[i, :n].tolist(), i
        for x, y in ((a.alpha_values, b.alpha_values), (a.logprobs["q"], b.logprobs["q"]),
                     (a.logprobs["t"], b.logprobs["t"]), (a.diagnostics["kl_t"], b.diagnostics["kl_t"]),
                     (a.diagnostics["ess_ratio"], b.diagnostics["ess_ratio"])):
            torch.testing.assert_close(x[i, :n], y[i, :n], atol=2e-5, rtol=1e-4)


def test_refilled_rows_equal_the_static_reference_and_unbatched_rows(pair):
    seeds = list(range(40, 48))
    stats = SchedulerStats()
    refilled = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=CAPS, seed=seeds, batch_size=3)
    static = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=max(CAPS), seed=seeds, loop="static", batch_size=3)
    assert refilled.lengths.tolist() == CAPS
    for i, cap in enumerate(CAPS):  # the static loop ran every row to 14 tokens: its prefix is the row
        assert refilled.generated_ids[i, :cap].tolist() == static.generated_ids[i, :cap].tolist()
        torch.testing.assert_close(refilled.alpha_values[i, :cap], static.alpha_values[i, :cap], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(refilled.logprobs["q"][i, :cap], static.logprobs["q"][i, :cap], atol=2e-5, rtol=1e-4)
    for i in (1, 5):
        alone = pair.generate(PROMPTS[i:i + 1], PROMPTS_T[i:i + 1], max_new_tokens=CAPS[i], seed=seeds[i:i + 1])
        assert alone.generated_ids[0].tolist() == refilled.generated_ids[i, : CAPS[i]].tolist()
    # the texts of the refilled run follow the rows, not the finishing order
    assert refilled.generated_texts == [pair.tokenizer.decode(refilled.generated_ids[i, :c], skip_special_tokens=True)
                                        for i, c in enumerate(CAPS)]


def test_refill_on_one_model_with_eos_matches_static_and_keeps_slots_busy(eosy):
    prompts = [p for p in PROMPTS for _ in range(2)]
    seeds = list(range(100, 116))
    stats = SchedulerStats()
    rows = [StreamRow(p, seed=s) for p, s in zip(prompts, seeds)]
    streamed = {r.index: r for r in eosy.generate_stream(rows, max_new_tokens=10, limit=4, stats=stats)}
    static = eosy.generate(prompts, max_new_tokens=10, seed=seeds, loop="static", batch_size=4)
    refilled = eosy.generate(prompts, max_new_tokens=10, seed=seeds, batch_size=4)
    _assert_rows_equal(refilled, static)
    assert "eos" in static.finish_reasons and len(set(static.lengths.tolist())) > 3
    for i, row in streamed.items():
        assert row.token_ids.tolist() == refilled.generated_ids[i, : int(refilled.lengths[i])].tolist()
    # Each decode step emits one token per row in flight (first tokens come from the prefill) ...
    assert stats.row_steps == int(static.lengths.sum()) - len(prompts)
    # ... and refilling takes fewer steps than fixed micro-batches that wait for their longest row.
    static_steps = sum(int(static.lengths[i:i + 4].max()) - 1 for i in range(0, len(prompts), 4))
    assert stats.steps < static_steps
    assert stats.occupancy(4) > sum(int(n) - 1 for n in static.lengths) / (static_steps * 4)


def test_stream_yields_each_row_when_it_ends_and_reads_rows_lazily(pair):
    pulled = []

    def rows():
        for i, (p, pt) in enumerate(zip(PROMPTS, PROMPTS_T)):
            pulled.append(i)
            yield StreamRow(p, pt, seed=7 + i, max_new_tokens=CAPS[i], id=f"row-{i}")

    seen, outputs = [], {}
    for out in pair.generate_stream(rows(), max_new_tokens=max(CAPS), limit=2):
        seen.append((out.index, len(pulled)))
        outputs[out.index] = out
        assert out.id == f"row-{out.index}" and len(out.token_ids) == CAPS[out.index]
        assert out.text == pair.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        assert set(out.traces) >= {"alpha", "logprob_q", "kl_t"} and out.traces["alpha"].shape == (CAPS[out.index],)
    assert sorted(i for i, _ in seen) == list(range(len(PROMPTS)))
    # rows are read a bounded window ahead (longest-first admission), never more: see
    # test_admission.py::test_an_endless_stream_is_read_a_bounded_window_ahead
    assert all(pulled_then <= done + 2 + LOOKAHEAD_PER_SLOT * 2 for done, (_, pulled_then) in enumerate(seen))
    assert [i for i, _ in seen] != list(range(len(PROMPTS)))  # finishing order, not input order
    reference = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=CAPS, seed=[7 + i for i in range(len(PROMPTS))])
    for i, out in outputs.items():
        assert out.token_ids.tolist() == reference.generated_ids[i, : CAPS[i]].tolist()
        torch.testing.assert_close(out.traces["alpha"], reference.alpha_values[i, : CAPS[i]], atol=2e-5, rtol=1e-4)


def test_lowering_the_limit_mid_stream_changes_no_row(pair):
    limit = InFlightLimit(5)
    seeds = [3 * i + 1 for i in range(len(PROMPTS))]
    rows = [StreamRow(p, pt, seed=s) for p, pt, s in zip(PROMPTS, PROMPTS_T, seeds)]
    caps = [4, 12, 12, 12, 12, 6, 3, 8]
    for row, cap in zip(rows, caps):
        row.max_new_tokens = cap
    stats = SchedulerStats()
    got = {}
    for out in pair.generate_stream(rows, max_new_tokens=12, limit=limit, stats=stats):
        got[out.index] = out.token_ids.tolist()
        limit.lower(2)  # rows 2..4 were in flight: they go back to the queue and restart
    assert limit.value == 2
    reference = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=caps, seed=seeds, batch_size=8)
    for i in range(len(PROMPTS)):
        assert got[i] == reference.generated_ids[i, : int(reference.lengths[i])].tolist()
    assert stats.row_steps > int(reference.lengths.sum()) - len(PROMPTS)  # restarted rows redid work
    with pytest.raises(ValueError, match="positive integer"):
        limit.lower(0)


def test_out_of_memory_halves_the_limit_and_changes_no_row(tiny_models, monkeypatch):
    pair = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)
    real_forward = pair.model_t.forward

    @functools.wraps(real_forward)
    def forward(*args, **kwargs):  # the real model, failing like a GPU that fits only 2 rows
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(*args, **kwargs)

    seeds = list(range(len(PROMPTS)))
    reference = pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=CAPS, seed=seeds, batch_size=8)
    monkeypatch.setattr(pair.model_t, "forward", forward)
    limit = InFlightLimit(6)
    rows = [StreamRow(p, pt, seed=s, max_new_tokens=c) for p, pt, s, c in zip(PROMPTS, PROMPTS_T, seeds, CAPS)]
    got = {o.index: o.token_ids.tolist() for o in
           pair.generate_stream(rows, max_new_tokens=max(CAPS), limit=limit, oom_backoff=True)}
    assert limit.value <= 2 and limit.backoffs and limit.backoffs[0][0] > 2
    assert "out of memory" in limit.backoffs[0][2]
    for i in range(len(PROMPTS)):
        assert got[i] == reference.generated_ids[i, : int(reference.lengths[i])].tolist()
    with pytest.raises(torch.OutOfMemoryError):  # without back-off the error reaches the caller
        pair.generate(PROMPTS, PROMPTS_T, max_new_tokens=3, seed=0, batch_size=4)


def test_pad_columns_are_trimmed_and_holes_repacked_with_exact_logits(pair):
    tok, model = pair.tokenizer, pair.model_t
    prompts = [PROMPTS[2], PROMPTS[1], PROMPTS[0]]  # long, short, medium

    def alone(i: int, extra: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([tok(prompts[i]).input_ids + extra])).logits[0, -1, : pair.vocab_size]

    stream = ModelStream(model, pair.vocab_size)
    stream.prefill(*pair.encode(prompts))
    lengths = [len(tok(p).input_ids) for p in prompts]
    stream.step(torch.tensor([5, 6, 7]))
    stream.keep_rows(torch.tensor([1, 2]))  # the long row leaves
    stream.compact()
    assert stream.attention_mask.shape[1] == max(lengths[1:]) + 1
    assert all(layer.keys.shape[-2] == stream.attention_mask.shape[1] for layer in stream.cache.layers)
    logits = stream.extend(torch.tensor([[8, 9, 10], [11, 12, 13]]))
    torch.testing.assert_close(logits[0, 2], alone(1, [6, 8, 9, 10]), atol=2e-4, rtol=1e-4)
    # row 0 keeps one of the three new tokens, row 1 all three: a hole of two columns in row 0
    width = stream.attention_mask.shape[1]
    stream.drop_tail(torch.tensor([1, 3]), 3)
    assert stream.attention_mask.shape[1] == width and stream.attention_mask[0, -2:].sum() == 0
    after_hole = stream.step(torch.tensor([20, 21]))
    torch.testing.assert_close(after_hole[0], alone(1, [6, 8, 20]), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(after_hole[1], alone(2, [7, 11, 12, 13, 21]), atol=2e-4, rtol=1e-4)
    # repacking removes the hole columns no row needs and keeps every row's logits exact
    stream.drop_tail(torch.tensor([1, 0]), 1)  # row 1 forgets token 21 too
    stream.compact(min_waste=1)
    assert stream.attention_mask.shape[1] == int(stream.attention_mask.sum(-1).max())
    logits = stream.step(torch.tensor([30, 31]))
    torch.testing.assert_close(logits[0], alone(1, [6, 8, 20, 30]), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone(2, [7, 11, 12, 13, 31]), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=[3, 4]), "max_new_tokens must be"),
        (dict(max_new_tokens=[3, 0, 1]), "max_new_tokens must be"),
        (dict(max_new_tokens=[3, 4, 5], loop="static"), "per-row max_new_tokens needs loop='refill'"),
        (dict(loop="fast"), "loop must be one of refill, static"),
        (dict(draft_tokens=-1), "draft_tokens must be an integer in 0..64"),
        (dict(draft_tokens=2, loop="static"), "draft_tokens needs loop='refill'"),
        (dict(batch_size=True), "batch_size"),
    ],
)
def test_bad_refill_arguments(pair, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pair.generate(PROMPTS[:3], **kwargs)


def test_stream_row_errors_name_the_row(pair):
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a non-empty string"):
        list(pair.generate_stream([StreamRow("a"), StreamRow("")], max_new_tokens=2))
    with pytest.raises(ValueError, match="row 0: max_new_tokens must be in 1..2"):
        list(pair.generate_stream([StreamRow("a", max_new_tokens=5)], max_new_tokens=2))
