"""Per-call alpha settings of `generate` / `generate_stream` (what `bench` uses instead of mutating the
model): the same draws as a model built with those settings, the model's own attributes untouched."""

from __future__ import annotations

import pytest
import torch

from os_cli.api.model import OptimalSamplingModel, StreamRow

PROMPTS = ["Hello there", "What is 2 plus 3?"]


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def test_alpha_per_call_equals_the_attribute_and_leaves_it(pair, tiny_models):
    fixed = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32,
                                 alpha_method="fixed", fixed_alpha=0.3)
    want = fixed.generate(PROMPTS, max_new_tokens=6, seed=5)
    got = pair.generate(PROMPTS, max_new_tokens=6, seed=5, alpha={"method": "fixed", "fixed": 0.3})
    assert torch.equal(got.generated_ids, want.generated_ids) and got.generated_texts == want.generated_texts
    assert torch.equal(got.mask, want.mask) and torch.equal(got.logprobs["q"][got.mask], want.logprobs["q"][want.mask])
    assert torch.allclose(got.alpha_values[got.mask], torch.tensor(0.3))
    assert (pair.alpha_method, pair.fixed_alpha) == ("kl_symmetry", 0.5)  # the model is unchanged
    again = pair.generate(PROMPTS, max_new_tokens=6, seed=5)
    assert not torch.allclose(again.alpha_values[again.mask], torch.tensor(0.3))


def test_alpha_per_call_in_the_stream_and_the_static_loop(pair):
    rows = [StreamRow(p, seed=1) for p in PROMPTS]
    streamed = {r.index: r for r in pair.generate_stream(rows, max_new_tokens=5, alpha={"method": "fixed", "fixed": 0.8})}
    static = pair.generate(PROMPTS, max_new_tokens=5, seed=[1, 1], loop="static", alpha={"method": "fixed", "fixed": 0.8})
    for i in range(len(PROMPTS)):
        assert streamed[i].token_ids.tolist() == static.generated_ids[i][: len(streamed[i].token_ids)].tolist()


@pytest.mark.parametrize("alpha, message", [
    ({"methd": "fixed"}, "alpha must be a dict with keys among method, fixed, min, max"),
    ("fixed", "alpha must be a dict"),
    ({"method": "kl"}, "alpha_method 'kl' is unknown"),
    ({"min": 0.9, "max": 0.6}, "must not exceed alpha_max"),
])
def test_bad_alpha_per_call_is_refused(pair, alpha, message):
    with pytest.raises(ValueError, match=message):
        pair.generate(PROMPTS, max_new_tokens=2, alpha=alpha)


def test_ignore_eos_per_call_runs_every_row_to_its_cap(pair):
    natural = pair.generate(PROMPTS * 3, max_new_tokens=20, seed=1)
    assert "eos" in natural.finish_reasons  # this seed ends a row early (row 2, at 13 tokens)
    out = pair.generate(PROMPTS * 3, max_new_tokens=20, seed=1, ignore_eos=True)
    assert out.lengths.tolist() == [20] * 6 and set(out.finish_reasons) == {"length"}
    assert pair.eos_token_ids  # the model's own EOS ids are untouched
    stream = list(pair.generate_stream([StreamRow(p, seed=2) for p in PROMPTS], max_new_tokens=7, ignore_eos=True))
    assert sorted(len(r.token_ids) for r in stream) == [7, 7]
