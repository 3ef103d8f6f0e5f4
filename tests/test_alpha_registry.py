"""The alpha-method tables: alpha_names (torch-free names and equations), alpha.METHODS (reference
solvers) and fastmix.METHODS (fast solvers) list the same methods, every method solves the equation
its entry states, and a method registered in the table works without editing anything else."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_alpha import entropy_reference, ess_reference, kl_reference, make_pair, reverse_kl_reference, rows

from os_cli.mix import alpha as A
from os_cli.mix import alpha_names
from os_cli.mix import fastmix
from os_cli.mix.alpha_names import ALPHA_METHODS, AlphaMethodInfo
from os_cli.recipe import SCHEMA
from os_cli.mix.rng import row_keys
from os_cli.mix.sampler import SamplerConfig, mixture_step

FIXED = 0.3
# float64 NumPy solutions of each method's equation (tests/test_alpha.py), from one row's
# (log pi_theta, log pi_t). A new method needs its own here: the test below fails without one.
EQUATION_SOLUTIONS = {
    "fixed": lambda t, T: FIXED,
    "kl_symmetry": kl_reference,
    "reverse_kl_symmetry": reverse_kl_reference,
    "ess_balance": ess_reference,
    "entropy": entropy_reference,
}


def test_the_recipe_schema_offers_exactly_the_registered_names():
    assert ALPHA_METHODS == tuple(info.name for info in alpha_names.METHOD_INFO)
    assert SCHEMA.fields["alpha"].fields["method"].choices == ALPHA_METHODS
    assert A.ALPHA_METHODS is ALPHA_METHODS
    assert len(set(ALPHA_METHODS)) == len(ALPHA_METHODS)


def test_reference_and_fast_tables_cover_exactly_the_names():
    assert tuple(A.METHODS) == ALPHA_METHODS  # same order: the error message lists them
    assert set(fastmix.METHODS) == set(ALPHA_METHODS)
    for name, method in A.METHODS.items():
        assert method.name == name and method.info is alpha_names.INFO[name]
        assert method.info.equation and "\n" not in method.info.equation
    assert [name for name, m in A.METHODS.items() if not m.clamped] == ["fixed"]


def test_the_names_import_without_torch():
    code = "import sys, os_cli.mix.alpha_names, os_cli.recipe.schema; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("method", ALPHA_METHODS)
@pytest.mark.parametrize("kind", ["random", "independent", "peaked"])
def test_every_method_solves_its_equation_on_both_paths(method, kind):
    """Full supports (the fast path's domain; leak rules are tested in test_alpha.py): the reference
    and the fast solver both land on the float64 solution of the method's equation."""
    lt, lT = make_pair(kind, batch=6, vocab=64, seed=11)
    expected = torch.tensor([EQUATION_SOLUTIONS[method](t, T) for t, T in zip(rows(lt), rows(lT))])
    reference = A.solve_alpha(method, lt, lT, fixed_alpha=FIXED, alpha_min=0.0, alpha_max=1.0)
    fast, resolved = fastmix.solve(method, lt, lT - lt, alpha_min=0.0, alpha_max=1.0, fixed_alpha=FIXED,
                                   alpha_init=None, logp_t=lT)
    torch.testing.assert_close(reference, expected.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(fast, expected.float(), atol=1e-4, rtol=0)
    assert resolved == 0


def constant_quarter(logp_theta, logp_t, *, fixed_alpha, tol):
    alpha = torch.full((logp_theta.shape[0],), 0.25)
    return A.SolveResult(alpha, 0, torch.zeros_like(alpha))


def test_a_method_registered_in_the_table_works_without_other_edits(monkeypatch):
    lt, lT = make_pair("random", batch=3, vocab=32)
    with pytest.raises(ValueError, match="unknown alpha method 'quarter'"):
        A.solve_alpha("quarter", lt, lT)
    toy = A.AlphaMethod(AlphaMethodInfo("quarter", "a = 1/4"), constant_quarter)
    monkeypatch.setitem(A.METHODS, "quarter", toy)
    monkeypatch.setitem(fastmix.METHODS, "quarter", fastmix.Reference())

    assert A.solve_alpha("quarter", lt, lT, alpha_min=0.0).tolist() == [0.25] * 3
    assert A.solve_alpha("quarter", lt, lT).tolist() == [0.5] * 3  # clamped to the default [0.5, 1]
    assert A.solve_alpha_raw("quarter", lt, lT).alpha.tolist() == [0.25] * 3
    # The sampler, reference and fast solvers: same alpha, same q*, same draws.
    config = SamplerConfig(alpha_method="quarter", alpha_min=0.0)
    keys = row_keys(torch.arange(3))
    theta, teacher = 3 * torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(5))
    fast = mixture_step(theta, teacher, config, row_keys=keys, step=0)
    ref = mixture_step(theta, teacher, config, row_keys=keys, step=0, solver="reference")
    assert fast.alpha.tolist() == ref.alpha.tolist() == [0.25] * 3
    assert torch.equal(fast.tokens, ref.tokens)
    torch.testing.assert_close(fast.logq, ref.logq)


def test_the_toy_method_is_gone_after_the_test():
    assert "quarter" not in A.METHODS and "quarter" not in fastmix.METHODS
    with pytest.raises(ValueError, match="expected one of: fixed, kl_symmetry, reverse_kl_symmetry"):
        A.validate_alpha_method("quarter")
