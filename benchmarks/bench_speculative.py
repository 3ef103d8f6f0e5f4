"""Exact speculative q* sampling at batch 1: measured speed-up against the ideal one.

    nice -n 10 .venv/bin/python benchmarks/bench_speculative.py                # k = 1, 2, 3
    nice -n 10 .venv/bin/python benchmarks/bench_speculative.py --ks 2 4 --repeats 5

Models (offline, random weights, see bench_refill.build_pair): theta hidden 256 x 2 layers; the
teacher is theta's two layers followed by --teacher-layers - 2 more whose output projections are
scaled by --perturb, so the teacher costs several thetas and q* stays near pi_theta (drafts get
accepted, as with a policy and a related teacher). alpha: kl_symmetry in [0.5, 1], temperature 1.

Per repeat, interleaved: the plain loop (k = 0) and each k on the same rows at batch 1, EOS
disabled (every row runs --max-new-tokens). Forward costs are timed on their own (median of 30,
os_cli.bench.draft_costs.forward_costs, which `os-sample bench --draft-tokens` uses too): theta one
position, the teacher one and k + 1 positions, and the q* step. Reported per k (the formulas are
os_cli.bench.draft_costs's ideal_speedup and ideal_plus_speedup):
  a          per-position acceptance (accepted / verified drafts)
  E          (1 - a^(k+1)) / (1 - a), tokens per round
  ideal      issue 9's: E * (t_theta + t_T(1)) / (k t_theta + t_T(k+1))
  ideal+     also counting what a round really runs: k + 1 theta forwards (the bonus position needs
             theta after d_k) and one q* step over the k + 1 positions (timed as t_q(k+1)), against
             t_theta + t_T(1) + one q* step per plain token
  measured   tokens/s at k over tokens/s at k = 0, median (min-max) over repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_refill import CORPUS, build_pair, run_refill, spread  # noqa: E402

from os_cli import OptimalSamplingModel, scheduler, speculative  # noqa: E402
from os_cli.bench.draft_costs import forward_costs, ideal_plus_speedup, ideal_speedup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=360)
    parser.add_argument("--teacher-layers", type=int, default=10)
    parser.add_argument("--perturb", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (batch 1: one is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = [CORPUS[(5 * i) % len(CORPUS)][:40] for i in range(args.rows)]
    caps = [args.max_new_tokens] * args.rows
    with tempfile.TemporaryDirectory() as tmp:
        theta, teacher = build_pair(Path(tmp), args.vocab, theta_shape=(256, 2, 768),
                                    teacher_shape=(256, args.teacher_layers, 768), teacher_from_theta=args.perturb)
        model = OptimalSamplingModel(theta, teacher, device="cpu", dtype=torch.float32)
        run_refill(model, prompts[:1], [8], 1)  # warm-up
        for k in args.ks:
            run_refill(model, prompts[:1], [8], 1, draft_tokens=k)
        rates: dict[int, list[float]] = {k: [] for k in [0] + args.ks}
        acceptance: dict[int, list[float]] = {k: [] for k in args.ks}
        for repeat in range(args.repeats):
            for k in [0] + args.ks:
                stats = scheduler.SchedulerStats()
                n, s = run_refill(model, prompts, caps, 1, draft_tokens=k, stats=stats)
                rates[k].append(n / s)
                if k:
                    acceptance[k].append(stats.acceptance)
            print(f"repeat {repeat}: " + ", ".join(f"k={k} {v[-1]:.1f} tok/s" for k, v in rates.items()), flush=True)
        costs = forward_costs(model, prompts[0], 40 + args.max_new_tokens // 2, args.ks)
        print("costs (ms, batch 1): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
        print(f"{'k':>2} {'a':>6} {'E':>6} {'ideal':>7} {'ideal+':>7}  measured (min-max)       measured/ideal, /ideal+")
        for k in args.ks:
            a = statistics.median(acceptance[k])
            e = speculative.expected_tokens_per_round(a, k)
            ideal, ideal_plus = ideal_speedup(a, k, costs), ideal_plus_speedup(a, k, costs)
            measured = [r / r0 for r, r0 in zip(rates[k], rates[0])]
            ratio = statistics.median(measured) / ideal
            print(f"{k:>2} {a:6.3f} {e:6.2f} {ideal:7.2f} {ideal_plus:7.2f}  {spread(measured):22s} {ratio:.2f}"
                  f" / {statistics.median(measured) / ideal_plus:.2f}")


if __name__ == "__main__":
    main()
