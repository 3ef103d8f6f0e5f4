"""Alpha solver cost at LLM scale: wall time and sweeps over the vocabulary, per method.

    .venv/bin/python benchmarks/bench_alpha.py                 # batch 16, vocab 151936, CPU
    .venv/bin/python benchmarks/bench_alpha.py --device cuda --repeats 20

Two synthetic cases, both from correlated policy/teacher logits (a shared N(0, 3²) part plus
per-model noise, as two related LMs would produce): "spread" at temperature 1 and "peaked" at
temperature 0.2. The safeguarded Newton solvers are shown next to plain bisection to the same
tolerance (1e-6), with the largest alpha difference between the two as a correctness check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli import alpha as A  # noqa: E402


def make_case(batch: int, vocab: int, temperature: float, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shared = 3.0 * torch.randn(batch, vocab, generator=g)
    theta = shared + torch.randn(batch, vocab, generator=g)
    teacher = shared + 1.5 * torch.randn(batch, vocab, generator=g)
    to_logp = lambda x: torch.log_softmax(x / temperature, dim=-1).to(device)  # noqa: E731
    return to_logp(theta), to_logp(teacher)


def timed(fn, repeats: int, device: str):
    """Median wall time in ms over `repeats` runs (after one warm-up), and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    solvers = {
        "fixed": lambda lt, lT: A.solve_fixed(lt, lT, 0.5),
        "entropy": A.solve_entropy,
        "reverse_kl_symmetry": A.solve_reverse_kl_symmetry,
        "kl_symmetry": A.solve_kl_symmetry,
        "kl_symmetry (bisection)": lambda lt, lT: A.solve_kl_symmetry(lt, lT, newton=False),
        "ess_balance": A.solve_ess_balance,
        "ess_balance (bisection)": lambda lt, lT: A.solve_ess_balance(lt, lT, newton=False),
    }
    print(f"batch {args.batch}, vocab {args.vocab}, device {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}, tol 1e-6")
    print()
    print("| case | method | median ms | passes | max abs residual | mean alpha | max abs diff vs bisection |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, temperature in (("spread (T=1)", 1.0), ("peaked (T=0.2)", 0.2)):
        lt, lT = make_case(args.batch, args.vocab, temperature, args.device)
        results = {}
        for name, solve in solvers.items():
            ms, result = timed(lambda: solve(lt, lT), args.repeats, args.device)
            results[name] = result
            diff = ""
            if name.endswith("(bisection)"):
                newton = results[name.split(" ")[0]]
                diff = f"{(newton.alpha - result.alpha).abs().max().item():.1e} (Newton vs this)"
            print(f"| {case} | {name} | {ms:.1f} | {result.passes} | {result.residual.abs().max().item():.1e} | "
                  f"{result.alpha.mean().item():.4f} | {diff} |")


if __name__ == "__main__":
    main()
