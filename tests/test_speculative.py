"""Exact speculative q* sampling: the acceptance math, the rounds on real tiny models (caches rolled
back correctly, per-token quantities equal to the plain loop's) and the output distribution."""

from __future__ import annotations

import pytest
import torch
from scipy import stats as scipy_stats

from os_cli import OptimalSamplingModel

from os_cli.mix import rng

from os_cli.engine import speculative
from os_cli.api.model import StreamRow
from os_cli.mix.sampler import mixture_step
from os_cli.engine.scheduler import SchedulerStats

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus",
           "Tom has 4 apples", "Question 12: 12 plus", "Explain"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom", "Hi there",
             "Answer briefly.", "The quick brown fox"]


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def _two_sample_p_values(a: torch.Tensor, b: torch.Tensor, min_count: int = 10) -> list[float]:
    """Per position (column), the chi-square p-value that a's and b's token frequencies share one
    distribution; tokens seen fewer than `min_count` times in both together are pooled into one bin."""
    p_values = []
    for column in range(a.shape[1]):
        values = torch.cat([a[:, column], b[:, column]]).unique()
        counts = torch.stack([(a[:, column, None] == values).sum(0), (b[:, column, None] == values).sum(0)]).double()
        rare = counts.sum(0) < min_count
        if rare.any():
            counts = torch.cat([counts[:, ~rare], counts[:, rare].sum(1, keepdim=True)], 1)
        counts = counts[:, counts.sum(0) > 0]
        if counts.shape[1] < 2:
            p_values.append(1.0)
            continue
        p_values.append(float(scipy_stats.chi2_contingency(counts.numpy())[1]))
    return p_values


def test_one_step_of_draft_accept_residual_draws_exactly_q():
    """Pure math, V = 5: drafting from p, accepting with min(1, q/p), else the residual, gives q."""
    q = torch.tensor([0.50, 0.30, 0.15, 0.05, 0.0])
    p = torch.tensor([0.10, 0.10, 0.40, 0.20, 0.20])
    n = 40_000
    keys = rng.row_keys(torch.arange(n))
    steps = torch.full((n,), 3)
    logq, logp = q.log().expand(n, 5), p.log().expand(n, 5)
    drafts = speculative.draft(logp, keys, steps)
    accepted = speculative.accepted_prefix(logq[:, None], logp[:, None], drafts[:, None], keys, steps)
    residual = speculative.residual_draw(logq, logp, keys, steps)
    tokens = torch.where(accepted == 1, drafts, residual)
    counts = torch.bincount(tokens, minlength=5).double()
    assert counts[4] == 0  # q has no mass there: never emitted, though drafted 20 % of the time
    assert int((drafts == 4).sum()) > 0.18 * n
    chi2 = float(((counts[:4] - n * q[:4]) ** 2 / (n * q[:4])).sum())
    assert scipy_stats.chi2.sf(chi2, df=3) > 1e-3
    # acceptance rate is sum min(p, q) = 0.1 + 0.1 + 0.15 + 0.05 = 0.4
    assert abs(float(accepted.double().mean()) - 0.4) < 0.02
    # q == p: every draft is accepted, whatever the draw
    assert bool((speculative.accepted_prefix(logp[:, None], logp[:, None], drafts[:, None], keys, steps) == 1).all())


def test_expected_tokens_per_round():
    assert speculative.expected_tokens_per_round(0.0, 3) == 1.0
    assert speculative.expected_tokens_per_round(1.0, 3) == 4.0
    assert abs(speculative.expected_tokens_per_round(0.69, 2) - (1 + 0.69 + 0.69 ** 2)) < 1e-12


def test_speculative_rows_are_reproducible_and_independent_of_batch_mates(pair):
    kwargs = dict(max_new_tokens=14, seed=[5, 6, 7, 8, 9, 10], draft_tokens=2, temperature=0.9)
    a = pair.generate(PROMPTS, PROMPTS_T, batch_size=4, **kwargs)
    b = pair.generate(PROMPTS, PROMPTS_T, batch_size=4, **kwargs)
    alone = pair.generate(PROMPTS, PROMPTS_T, batch_size=1, **kwargs)
    assert torch.equal(a.generated_ids, b.generated_ids) and torch.equal(a.generated_ids, alone.generated_ids)
    torch.testing.assert_close(a.alpha_values, alone.alpha_values, atol=2e-5, rtol=1e-4, equal_nan=True)
    other_k = pair.generate(PROMPTS, PROMPTS_T, batch_size=4, **dict(kwargs, draft_tokens=3))
    assert not torch.equal(a.generated_ids, other_k.generated_ids)


@pytest.mark.parametrize("k", [1, 3])
def test_rounds_record_the_plain_loops_quantities_for_the_emitted_tokens(pair, k):
    """Recompute every emitted position without a cache and with the plain step forced to the
    emitted tokens: logits (so the caches were rolled back right), alpha, diagnostics, log-probs."""
    temperature, top_k = 0.8, 40
    caps = [14, 3, 9, 14, 1, 6]
    stats = SchedulerStats()
    rows = [StreamRow(p, pt, seed=20 + i, max_new_tokens=c) for i, (p, pt, c) in enumerate(zip(PROMPTS, PROMPTS_T, caps))]
    outs = list(pair.generate_stream(rows, max_new_tokens=14, temperature=temperature, top_k=top_k, draft_tokens=k,
                                     limit=3, return_logits=True, return_q_star_probs=True, stats=stats))
    assert stats.drafted > 0 and 0 < stats.acceptance < 1
    assert stats.tokens == sum(len(o.token_ids) for o in outs)
    config = pair._sampler_config(temperature, top_k, 1.0)
    key_of = {i: rng.row_keys(torch.tensor([20 + i])) for i in range(len(PROMPTS))}
    for out in outs:
        i, ids = out.index, out.token_ids.tolist()
        n = len(ids)
        assert n == caps[i] or out.finish_reason == "eos"
        full = {}
        for side, model, prompt in (("theta", pair.model_theta, PROMPTS[i]), ("t", pair.model_t, PROMPTS_T[i])):
            prompt_ids = pair.tokenizer(prompt).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1: -1, : pair.vocab_size]
            full[side] = logits
            torch.testing.assert_close(out.logits[side], logits, atol=2e-4, rtol=1e-4)
        plain = mixture_step(full["theta"], full["t"], config, row_keys=key_of[i].expand(n),
                             step=torch.arange(n))
        for name in ("alpha", "ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t", "fallback"):
            torch.testing.assert_close(out.traces[name], getattr(plain, name).float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.q_star_probs, plain.logq.exp(), atol=1e-5, rtol=1e-4)
        tokens = torch.tensor(ids)[:, None]
        expected = {
            "logprob_q": plain.logq.gather(1, tokens).squeeze(1),
            "logprob_theta": torch.log_softmax(full["theta"] / temperature, -1).gather(1, tokens).squeeze(1),
            "logprob_t": torch.log_softmax(full["t"] / temperature, -1).gather(1, tokens).squeeze(1),
        }
        for name, values in expected.items():
            torch.testing.assert_close(out.traces[name], values, atol=1e-4, rtol=1e-4)
        assert torch.isfinite(out.traces["logprob_q"]).all()  # every token lies in q*'s top-k support


def test_speculative_output_distribution_equals_the_plain_loops(tiny_models, monkeypatch):
    """Per-position token frequencies of 2000 rows (fixed seeds: deterministic, cannot flake) under
    k = 2 and under the plain loop agree by a chi-square test. The setting (alpha 0.2, so theta's
    drafts are often accepted, temperature 0.5, top-k 4 on q*) gives the test the power to see the
    classic mistake of drawing a rejected position from q* instead of the residual: p < 1e-4."""
    model = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32,
                                 alpha_method="fixed", fixed_alpha=0.2, alpha_min=0.0)
    n, prompt, prompt_t = 2000, "The quick brown fox", "Tom has 4 apples"
    kwargs = dict(max_new_tokens=5, top_k=4, temperature=0.5, batch_size=n, skip_decode=True)
    stats = SchedulerStats()
    spec = [o.token_ids for o in model.generate_stream(
        (StreamRow(prompt, prompt_t, seed=i) for i in range(n)), draft_tokens=2, limit=n, stats=stats,
        **{k: v for k, v in kwargs.items() if k != "batch_size"})]
    plain = model.generate([prompt] * n, [prompt_t] * n, seed=list(range(n, 2 * n)), **kwargs)
    assert 0.3 < stats.acceptance < 0.95
    width = min(min(map(len, spec)), int(plain.lengths.min()))
    assert width >= 4
    spec = torch.stack([t[:width] for t in spec])
    same = _two_sample_p_values(spec, plain.generated_ids[:, :width])
    assert min(same) > 1e-3, same

    draw = speculative.residual_draw
    monkeypatch.setattr(speculative, "residual_draw", lambda logq, logp, keys, steps: draw(logq, logp - 1e4, keys, steps))
    wrong = model.generate([prompt] * n, [prompt_t] * n, seed=list(range(n)), draft_tokens=2, **kwargs)
    assert min(_two_sample_p_values(wrong.generated_ids[:, :width], plain.generated_ids[:, :width])) < 1e-4


def test_draft_tokens_needs_a_teacher_that_differs(tiny_models, tmp_path):
    import shutil

    single = OptimalSamplingModel(tiny_models["theta"], device="cpu")
    with pytest.raises(ValueError, match="draft_tokens needs a teacher that differs from theta"):
        single.generate(["a"], max_new_tokens=3, draft_tokens=2)
    # One model whose teacher half reads a hint drafts and verifies exactly as two copies of it do.
    copy = shutil.copytree(tiny_models["theta"], tmp_path / "theta-copy")
    two = OptimalSamplingModel(tiny_models["theta"], str(copy), device="cpu")
    prompts, hinted = ["What is 2 plus 3?", "Hi"], ["What is 2 plus 3? Hint: 5.", "Explain quantum computing"]
    a = single.generate(prompts, prompts_t=hinted, max_new_tokens=8, seed=[3, 4], draft_tokens=2)
    b = two.generate(prompts, prompts_t=hinted, max_new_tokens=8, seed=[3, 4], draft_tokens=2)
    assert torch.equal(a.generated_ids, b.generated_ids)
    torch.testing.assert_close(a.logprobs["t"], b.logprobs["t"], equal_nan=True, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def absolute_pair(tmp_path_factory, tiny_tokenizer):
    """Two tiny GPT-2 models (learned absolute positions, context 64): a position past the context is an
    IndexError on CPU (a device assert on CUDA), not a quiet extrapolation as with RoPE."""
    from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig

    root, tok = tmp_path_factory.mktemp("gpt2"), tiny_tokenizer
    paths = []
    for name, seed in (("theta", 1), ("teacher", 2)):
        config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                            eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return OptimalSamplingModel(*paths, device="cpu", dtype=torch.float32)


def test_drafts_are_capped_at_the_tokens_left_and_counted_in_the_context(absolute_pair):
    model = absolute_pair
    prompt = "Question 7: 7 plus 10 equals 17. Tom has 4 apples and buys 7 more."  # 16 new + 16 drafts fit in 64
    n = len(model.tokenizer(prompt).input_ids)
    assert n + 16 + 16 <= 64 < n + 16 + 20 - 2  # k = 20 from the last rounds' steps would feed positions past 63
    kwargs = dict(max_new_tokens=16, seed=[1, 2], ignore_eos=True, batch_size=2)
    capped = model.generate([prompt, "Hi"], draft_tokens=20, **kwargs)  # drafting 20 past the last token: IndexError
    assert torch.equal(capped.generated_ids, model.generate([prompt, "Hi"], draft_tokens=16, **kwargs).generated_ids)
    assert capped.generated_ids.shape == (2, 16)
    # a prompt that fits without drafts but not with them is refused up front, naming draft_tokens
    long_prompt = "Question 7: 7 plus 10 equals 17. Question 12: 12 plus 15 equals 27."
    n = len(model.tokenizer(long_prompt).input_ids)
    assert n + 16 <= 64 < n + 16 + 16
    with pytest.raises(ValueError, match=r"up to 16 drafted past them \(draft_tokens\).* or draft_tokens"):
        model.generate([long_prompt], draft_tokens=20, **dict(kwargs, seed=1, batch_size=1))
    model.generate([long_prompt], max_new_tokens=16, seed=1)  # the plain loop fits


def test_a_round_drafts_no_more_than_any_row_has_left(pair):
    """draft_tokens far above max_new_tokens: each round drafts at most the tokens left (not k + 1 theta
    forwards of waste per round), and the tokens are exactly those of k = max_new_tokens."""
    rows = lambda: [StreamRow(p, pt, seed=30 + i) for i, (p, pt) in enumerate(zip(PROMPTS, PROMPTS_T))]  # noqa: E731
    big, small = SchedulerStats(), SchedulerStats()
    kwargs = dict(max_new_tokens=6, limit=3, ignore_eos=True, skip_decode=True)
    a = {o.index: o.token_ids for o in pair.generate_stream(rows(), draft_tokens=60, stats=big, **kwargs)}
    b = {o.index: o.token_ids for o in pair.generate_stream(rows(), draft_tokens=6, stats=small, **kwargs)}
    assert all(torch.equal(a[i], b[i]) for i in b)
    # a row's first token comes from its prefill, so at most 5 are left for the rounds: <= 6 theta forwards each
    assert big.theta_forwards <= 6 * big.steps
    assert big.theta_forwards == small.theta_forwards


@pytest.mark.parametrize("value", [65, 20000, -1, 2.0, True])
def test_draft_tokens_is_bounded_in_the_api(pair, value):
    with pytest.raises(ValueError, match=r"draft_tokens must be an integer in 0\.\.64"):
        pair.generate(["Hi"], ["Tom"], max_new_tokens=4, seed=1, draft_tokens=value)
    with pytest.raises(ValueError, match=r"draft_tokens must be an integer in 0\.\.64"):
        list(pair.generate_stream([StreamRow("Hi", "Tom", seed=1)], max_new_tokens=4, draft_tokens=value))
