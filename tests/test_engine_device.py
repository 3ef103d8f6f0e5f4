"""Engine checks on the device and dtype named by OS_SAMPLE_TEST_DEVICE / OS_SAMPLE_TEST_DTYPE.

Default cpu / float32 (part of the normal suite). scripts/gpu_check.sh runs this file with
OS_SAMPLE_TEST_DEVICE=cuda OS_SAMPLE_TEST_DTYPE=bfloat16 on a GPU machine.
"""

from __future__ import annotations

import os

import pytest
import torch

from os_cli import OptimalSamplingModel

from os_cli.mix import fastmix
from os_cli.mix import alpha as A
from os_cli.mix.sampler import SamplerConfig, mixture_step

DEVICE = os.environ.get("OS_SAMPLE_TEST_DEVICE", "cpu")
DTYPE = getattr(torch, os.environ.get("OS_SAMPLE_TEST_DTYPE", "float32"))
PROMPTS = ["What is 2 plus 3?", "Hi", "The quick brown fox jumps over the lazy dog. Question 7: 7 plus"]
PROMPTS_T = ["Question: What is 2 plus 3? Hint: it is 5.", "Explain quantum computing", "Tom"]

pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA")


@pytest.fixture(scope="module")
def pair(tiny_models):
    return OptimalSamplingModel(tiny_models["theta"], tiny_models["teacher"], device=DEVICE, dtype=DTYPE)


def test_model_lives_on_the_requested_device_and_dtype(pair):
    p = next(pair.model_t.parameters())
    assert p.device.type == torch.device(DEVICE).type and p.dtype == DTYPE


def test_seeded_generation_reproduces_and_rows_ignore_batch_size(pair):
    seeds = [11, 12, 13]
    a = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=10, seed=seeds)
    b = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=10, seed=seeds)
    assert torch.equal(a.generated_ids, b.generated_ids)
    micro = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=10, seed=seeds, batch_size=1)
    if DTYPE == torch.float32:  # bf16 kernels may round differently per batch shape
        assert torch.equal(a.generated_ids, micro.generated_ids)
    for name in ("alpha", "ess_ratio", "kl_theta", "kl_t"):
        assert torch.isfinite(a.diagnostics[name][a.mask]).all(), name


def test_q_star_follows_the_formula_from_returned_logits(pair):
    out = pair.generate(PROMPTS, prompts_t=PROMPTS_T, max_new_tokens=6, seed=1, return_logits=True,
                        return_q_star_probs=True)
    m = out.mask
    log_theta = torch.log_softmax(out.logits["theta"][m].float(), -1)
    log_t = torch.log_softmax(out.logits["t"][m].float(), -1)
    alpha = out.alpha_values[m][:, None]
    expected = torch.softmax((1 - alpha) * log_theta + alpha * log_t, -1)
    torch.testing.assert_close(out.q_star_probs[m], expected, atol=1e-5, rtol=1e-4)


def test_fast_solvers_on_device_match_the_reference():
    g = torch.Generator().manual_seed(0)
    shared = 3 * torch.randn(8, 151936, generator=g)
    theta = (shared + torch.randn(8, 151936, generator=g)).to(DEVICE, DTYPE)
    teacher = (shared + 1.5 * torch.randn(8, 151936, generator=g)).to(DEVICE, DTYPE)
    lt, lT = torch.log_softmax(theta.float(), -1), torch.log_softmax(teacher.float(), -1)
    for method in ("kl_symmetry", "ess_balance"):
        fast, resolved = fastmix.solve(method, lt, lT - lt, alpha_min=0.0, alpha_max=1.0, fixed_alpha=0.5,
                                       alpha_init=None, logp_t=lT)
        assert resolved == 0
        torch.testing.assert_close(fast, A.solve_alpha(method, lt, lT, alpha_min=0.0), atol=1e-4, rtol=0)
        out = mixture_step(theta, teacher, SamplerConfig(alpha_method=method), alpha_init=fast)
        assert out.logq.device.type == torch.device(DEVICE).type and torch.isfinite(out.alpha).all()
