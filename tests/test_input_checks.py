"""Bad input to the Python API is refused with a ValueError naming the argument (issue 8: A9, B)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from os_cli import OptimalSamplingModel
from os_cli.limits import MAX_SEED, MIN_TEMPERATURE

LONG = "Question 7: 7 plus 10 equals 17. " * 120  # far more than the tiny models' 1024 positions


@pytest.fixture(scope="module")
def model(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device="cpu")


def test_prompt_longer_than_the_context_is_refused(model):
    assert model.context_theta == 1024 and model.context_t == 1024
    with pytest.raises(ValueError, match=r"prompts\[1\]: the prompt has (\d+) tokens; with 4 new tokens that is "
                                         r"\d+ > 1024, the model's context") as info:
        model.generate(["What is 2 plus 3?", LONG], max_new_tokens=4, seed=0)
    assert "theta" in str(info.value)
    with pytest.raises(ValueError, match=r"prompts_t\[0\]: the prompt has \d+ tokens"):
        model.generate(["What is 2 plus 3?"], prompts_t=[LONG], max_new_tokens=4, seed=0)
    # a prompt that fits alone, and with up to 1024 - n new tokens, but not one more
    k = max(k for k in range(1, 200) if len(model.tokenizer("Question 7: 7 plus 10 equals 17. " * k).input_ids) < 1020)
    text = "Question 7: 7 plus 10 equals 17. " * k
    n = len(model.tokenizer(text).input_ids)
    with pytest.raises(ValueError, match=rf"prompts\[0\]: the prompt has {n} tokens; with {1025 - n} new tokens"):
        model.generate([text], max_new_tokens=1025 - n, seed=0)
    out = model.generate([text], max_new_tokens=1024 - n, seed=0)
    assert int(out.lengths[0]) >= 1


def test_seed_types_and_range(model):
    base = model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3, seed=3)
    same = model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3, seed=np.int64(3))
    assert torch.equal(base.generated_ids, same.generated_ids)
    assert torch.equal(base.generated_ids, model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3,
                                                          seed=torch.tensor(3)).generated_ids)
    listed = model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3, seed=[np.int32(5), 6])
    assert listed.generated_ids.shape[0] == 2
    for bad in (3.0, np.float64(3), "3", -1, MAX_SEED + 1, [1.5, 2], True, torch.tensor(3.0)):
        with pytest.raises(ValueError, match=r"seed(\[\d\])? must be an integer"):
            model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3, seed=bad)
    model.generate(["What is 2 plus 3?"], max_new_tokens=2, seed=MAX_SEED)  # the largest seed works


def test_top_k_zero_and_temperature_bound_match_the_cli(model):
    with pytest.raises(ValueError, match=r"top_k must be an integer: -1 \(off\) or a positive"):
        model.generate(["What is 2 plus 3?"], max_new_tokens=2, top_k=0, seed=0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0.001"):
        model.generate(["What is 2 plus 3?"], max_new_tokens=2, temperature=1e-40, seed=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in 1\.\.1048576"):
        model.generate(["What is 2 plus 3?"], max_new_tokens=10**12, seed=0)
    # the lowest temperature allowed stays finite and samples (nearly) the mixture's argmax
    out = model.generate(["What is 2 plus 3?"] * 2, max_new_tokens=3, temperature=MIN_TEMPERATURE, seed=[1, 2],
                         return_logits=True)
    assert torch.isfinite(out.logprobs["q"][out.mask]).all()
    assert torch.equal(out.generated_ids[0], out.generated_ids[1])  # the draw no longer matters


def test_load_failures_name_the_model_and_the_real_cause(tiny_models, tmp_path):
    import shutil

    from os_cli.errors import UserError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"could not load the teacher model: the folder .*empty has no config.json") \
            as info:
        OptimalSamplingModel(tiny_models["theta"], str(empty), device="cpu")
    assert "hub" not in str(info.value)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_models["theta"], no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(UserError, match=r"could not load the teacher model from the local folder .*no_weights") \
            as info:
        OptimalSamplingModel(tiny_models["theta"], str(no_weights), device="cpu")
    assert "hub" not in str(info.value)
    with pytest.raises(UserError, match="flash"):
        OptimalSamplingModel(tiny_models["theta"], device="cpu", attn_implementation="flash_attention_2")
