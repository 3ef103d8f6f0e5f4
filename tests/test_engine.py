"""The engine on real tiny models loaded through from_pretrained: caches, padding, EOS, seeds, q*."""

from __future__ import annotations

import math

import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.toy import save_tiny_model, tiny_qwen2_config

PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom"]


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", dtype=torch.float32)


def _full_logits(model, tokenizer, prompt: str, generated: list[int]) -> torch.Tensor:
    """Logits for every generated position from one uncached, unpadded forward."""
    ids = tokenizer(prompt).input_ids + generated
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    start = len(ids) - len(generated) - 1
    return logits[start : start + len(generated), : len(tokenizer)]


def test_padded_dual_prompt_batch_matches_unpadded_full_recomputation(pair):
    out = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=12, seed=3, return_logits=True)
    assert out.logits["theta"].shape == (3, out.generated_ids.shape[1], pair.vocab_size)
    for i in range(3):
        n = int(out.lengths[i])
        generated = out.generated_ids[i, :n].tolist()
        for side, model, prompt in (("theta", pair.model_theta, PROMPTS[i]), ("t", pair.model_t, PROMPTS_T[i])):
            expected = _full_logits(model, pair.tokenizer, prompt, generated)
            torch.testing.assert_close(out.logits[side][i, :n], expected, atol=2e-4, rtol=1e-4)
            assert torch.isnan(out.logits[side][i, n:]).all()


def test_rows_are_independent_of_batch_mates_and_batch_size(pair):
    seeds = [11, 12, 13]
    batched = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=10, seed=seeds)
    micro = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=10, seed=seeds, batch_size=2)
    alone = pair.generate(PROMPTS[2:], prompts_t=PROMPTS_T[2:], max_new_tokens=10, seed=seeds[2:])
    assert torch.equal(batched.generated_ids, micro.generated_ids)
    assert batched.generated_texts == micro.generated_texts
    n = int(alone.lengths[0])
    assert batched.generated_ids[2, :n].tolist() == alone.generated_ids[0, :n].tolist()
    torch.testing.assert_close(batched.alpha_values[2, :n], alone.alpha_values[0, :n])


def test_seed_reproduces_and_differs(pair):
    a = pair.generate(PROMPTS, max_new_tokens=8, seed=5)
    b = pair.generate(PROMPTS, max_new_tokens=8, seed=5)
    c = pair.generate(PROMPTS, max_new_tokens=8, seed=6)
    assert torch.equal(a.generated_ids, b.generated_ids)
    assert not torch.equal(a.generated_ids, c.generated_ids)
    torch.manual_seed(0)
    d = pair.generate(PROMPTS, max_new_tokens=8)
    torch.manual_seed(0)
    e = pair.generate(PROMPTS, max_new_tokens=8)
    assert torch.equal(d.generated_ids, e.generated_ids)


def test_q_star_probs_follow_the_formula_from_returned_logits_and_alphas(pair):
    temperature = 0.7
    out = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=6, temperature=temperature, seed=1,
                        return_logits=True, return_q_star_probs=True)
    m = out.mask
    log_theta = torch.log_softmax(out.logits["theta"][m] / temperature, -1)
    log_t = torch.log_softmax(out.logits["t"][m] / temperature, -1)
    alpha = out.alpha_values[m][:, None]
    expected = torch.softmax((1 - alpha) * log_theta + alpha * log_t, -1)
    torch.testing.assert_close(out.q_star_probs[m], expected, atol=1e-5, rtol=1e-4)
    # the recorded log-probs are those of the sampled tokens under each distribution
    tokens = out.generated_ids[m][:, None]
    torch.testing.assert_close(out.logprobs["q"][m], expected.gather(1, tokens).log().squeeze(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logprobs["theta"][m], log_theta.gather(1, tokens).squeeze(1), atol=1e-4, rtol=1e-4)
    assert ((out.alpha_values[m] >= 0.5) & (out.alpha_values[m] <= 1.0)).all()


def test_padded_vocabulary_pair(tiny_models, tiny_tokenizer):
    pair = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher_padded"], device="cpu")
    assert pair.model_t.get_output_embeddings().weight.shape[0] > len(tiny_tokenizer)
    out = pair.generate(PROMPTS, max_new_tokens=5, seed=0, return_q_star_probs=True)
    assert out.q_star_probs.shape[-1] == len(tiny_tokenizer)
    assert int(out.generated_ids[out.mask].max()) < len(tiny_tokenizer)
    assert torch.isfinite(out.diagnostics["kl_t"][out.mask]).all()


def test_same_model_mode_runs_one_model(tiny_models):
    single = OptimalSamplingModel(tiny_models["theta"], device="cpu")
    same = OptimalSamplingModel(tiny_models["theta"], tiny_models["theta"], device="cpu")
    assert single.model_t is single.model_theta and same.model_t is same.model_theta
    out = single.generate(PROMPTS, max_new_tokens=6, seed=2)
    m = out.mask
    assert torch.allclose(out.diagnostics["kl_theta"][m], torch.zeros(int(m.sum())), atol=1e-5)
    torch.testing.assert_close(out.logprobs["q"][m], out.logprobs["theta"][m], atol=1e-5, rtol=1e-5)


def test_eos_ends_rows_and_everything_after_is_padding(tmp_path, tiny_tokenizer):
    # A generation config listing half the vocabulary as EOS makes rows end at different steps.
    path = save_tiny_model(tmp_path / "eosy", tiny_tokenizer, tiny_qwen2_config(tiny_tokenizer), seed=4, init_std=0.2)
    from transformers import GenerationConfig

    eos_list = list(range(0, len(tiny_tokenizer), 2))
    GenerationConfig(eos_token_id=eos_list, pad_token_id=tiny_tokenizer.pad_token_id).save_pretrained(path)
    model = OptimalSamplingModel(str(path), device="cpu")
    out = model.generate(["a", "bb", "ccc", "dddd", "eeeee", "ffffff"] * 2, max_new_tokens=8, seed=9)
    assert set(out.finish_reasons) <= {"eos", "length"} and "eos" in out.finish_reasons
    for i, reason in enumerate(out.finish_reasons):
        n = int(out.lengths[i])
        last = int(out.generated_ids[i, n - 1])
        if reason == "eos":
            assert last in eos_list
            assert all(t not in eos_list for t in out.generated_ids[i, : n - 1].tolist())
        else:
            assert n == 8
        assert out.mask[i].sum() == n
        assert (out.generated_ids[i, n:] == tiny_tokenizer.pad_token_id).all()
        for values in (out.alpha_values, out.ess_ratios, out.logprobs["q"], out.diagnostics["kl_t"]):
            assert torch.isnan(values[i, n:]).all() and torch.isfinite(values[i, :n]).all()
    assert out.generated_ids.shape[1] == int(out.lengths.max())


def test_stop_strings_end_rows_and_cut_the_text(pair):
    free = pair.generate(PROMPTS, max_new_tokens=12, seed=[1, 2, 3])
    text = free.generated_texts[0]
    stop = text[3:5] if len(text) >= 5 else text[-1:]
    assert stop.strip()
    out = pair.generate(PROMPTS, max_new_tokens=12, seed=[1, 2, 3], stop=[stop])
    assert out.finish_reasons[0] == "stop"
    assert stop not in out.generated_texts[0] and text.startswith(out.generated_texts[0])


def test_force_first_token_and_special_tokens(tiny_models):
    forced = OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu",
                                  force_target_for_first_token=True, force_target_for_special_tokens=True)
    out = forced.generate(PROMPTS, max_new_tokens=4, seed=0, return_logits=True, return_q_star_probs=True)
    assert torch.all(out.alpha_values[:, 0] == 1.0)
    # later steps: special-token entries keep pi_t's unnormalised weight, the rest mix
    step = 1
    rows = out.mask[:, step]
    log_theta = torch.log_softmax(out.logits["theta"][rows, step], -1)
    log_t = torch.log_softmax(out.logits["t"][rows, step], -1)
    alpha = out.alpha_values[rows, step][:, None]
    mixed = (1 - alpha) * log_theta + alpha * log_t
    special = forced.special_token_ids
    mixed[:, special] = log_t[:, special]
    torch.testing.assert_close(out.q_star_probs[rows, step], torch.softmax(mixed, -1), atol=1e-5, rtol=1e-4)


def test_sample_from_teacher_matches_teacher_distribution(pair):
    out = pair.generate(PROMPTS, max_new_tokens=5, seed=0, sample_from="teacher")
    m = out.mask
    torch.testing.assert_close(out.logprobs["q"][m], out.logprobs["t"][m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha_method="kl"), "alpha_method"),
        (dict(alpha_min=0.9, alpha_max=0.2), "alpha_min"),
        (dict(fixed_alpha=1.5), "fixed_alpha"),
    ],
)
def test_bad_constructor_arguments(tiny_models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "prompts is empty"),
        (dict(prompts=["a", "b"], prompts_t=["a"]), "prompts_t has 1"),
        (dict(prompts=["a", ""]), r"prompts\[1\]"),
        (dict(prompts=["a"], max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=["a"], temperature=0), "temperature"),
        (dict(prompts=["a"], batch_size=0), "batch_size"),
        (dict(prompts=["a"], seed=[1, 2]), "seed"),
    ],
)
def test_bad_generate_arguments(pair, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pair.generate(**kwargs)


def test_missing_model_and_mismatched_tokenizers(tmp_path, tiny_models):
    with pytest.raises(ValueError, match="does-not-exist"):
        OptimalSamplingModel(str(tmp_path / "does-not-exist"), device="cpu")
    from os_cli.toy import build_tokenizer

    other_tok = build_tokenizer(["completely different text corpus " * 3, "zebra yak xylophone"] * 5, vocab_size=300)
    other = save_tiny_model(tmp_path / "other", other_tok, tiny_qwen2_config(other_tok), seed=0)
    with pytest.raises(ValueError, match="tokenizers of .*differ"):
        OptimalSamplingModel(tiny_models["theta"], str(other), device="cpu")


def test_masked_averages_are_finite(pair):
    out = pair.generate(PROMPTS, max_new_tokens=6, seed=0)
    mean_alpha = out.alpha_values[out.mask].mean()
    assert math.isfinite(float(mean_alpha))
    torch.testing.assert_close(out.alpha_values.nanmean(), mean_alpha)


def test_stream_rows_can_leave_join_and_roll_back(pair):
    """The primitives later refill and speculative decoding build on keep per-row logits exact."""
    from os_cli.engine.streams import ModelStream

    tok = pair.tokenizer
    prompts = PROMPTS

    def alone(i: int, extra: list[int]) -> torch.Tensor:
        """Next-token logits after prompt i and `extra`, from one uncached forward."""
        with torch.no_grad():
            return pair.model_t(torch.tensor([tok(prompts[i]).input_ids + extra])).logits[0, -1, : pair.vocab_size]

    def stream_for(rows):
        stream = ModelStream(pair.model_t, pair.vocab_size)
        ids, mask = pair.encode([prompts[i] for i in rows])
        return stream, stream.prefill(ids, mask)

    a, _ = stream_for([0, 1])
    step1 = a.step(torch.tensor([5, 6]))
    a.keep_rows(torch.tensor([1]))  # row 0 leaves
    b, _ = stream_for([2])  # a new row joins, with a different cache length
    a.join(b)
    logits = a.step(torch.tensor([7, 8]))
    torch.testing.assert_close(logits[0], alone(1, [6, 7]), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone(2, [8]), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(step1[1], alone(1, [6]), atol=2e-4, rtol=1e-4)

    a.rollback(1)  # forget the last token and feed another one instead
    logits = a.step(torch.tensor([9, 10]))
    torch.testing.assert_close(logits[0], alone(1, [6, 9]), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone(2, [10]), atol=2e-4, rtol=1e-4)
