"""`draft_tokens: auto` against fixed draft lengths, per batch size, on the speculative bench pair.

    nice -n 10 .venv/bin/python benchmarks/bench_draft_auto.py                       # batch 1 and 16
    nice -n 10 .venv/bin/python benchmarks/bench_draft_auto.py --batches 1 4 16 --repeats 5 --threads 1

Models (offline, random weights, bench_refill.build_pair as in bench_speculative.py): theta hidden 256 x 2
layers, the teacher theta's two layers plus --teacher-layers - 2 lightly perturbed ones (drafts get
accepted). --device / --dtype / --vocab / --theta-shape / --teacher-shape size it for a GPU
(scripts/gpu_check.sh). Per batch size B: --rows-per-batch x B rows (at least --min-rows), every row
--max-new-tokens tokens (EOS disabled), through the engine's refill loop at limit B. Timed interleaved in
each repeat (after a warm-up): k = 0 (plain), each fixed k in --ks, and auto. Reported per B: tokens/s
(median, min-max), each over k = 0 in the same repeat, auto over the best fixed k (the one with the best
median; k = 0 included), and which k auto ran (iterations per k, cost probes). Targets (issue 17): at
batch 1 auto >= 0.9 x the best fixed k; at batch 16 on a CPU auto >= 0.95 x k = 0.
The last lines are `SUMMARY` lines (tab-separated: section, what, value, target) for scripts/gpu_check.sh.
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

from os_cli import OptimalSamplingModel  # noqa: E402
from os_cli.engine.requests import SchedulerStats  # noqa: E402


def shape(text: str) -> tuple[int, int, int]:
    hidden, layers, inter = (int(x) for x in text.split("x"))
    return hidden, layers, inter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows-per-batch", type=int, default=2)
    parser.add_argument("--min-rows", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=360)
    parser.add_argument("--theta-shape", type=shape, default=(256, 2, 768), help="hidden x layers x intermediate")
    parser.add_argument("--teacher-layers", type=int, default=10)
    parser.add_argument("--perturb", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [0, *args.ks, "auto"]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        theta, teacher = build_pair(Path(tmp), args.vocab, theta_shape=args.theta_shape,
                                    teacher_shape=(args.theta_shape[0], args.teacher_layers, args.theta_shape[2]),
                                    teacher_from_theta=args.perturb)
        model = OptimalSamplingModel(theta, teacher, device=args.device, dtype=getattr(torch, args.dtype))
        print(f"device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, vocab {args.vocab}, "
              f"theta {args.theta_shape}, teacher layers {args.teacher_layers}, {args.max_new_tokens} tokens per row")
        for batch in args.batches:
            rows = max(args.min_rows, args.rows_per_batch * batch)
            prompts = [CORPUS[(5 * i) % len(CORPUS)][:40] for i in range(rows)]
            caps = [args.max_new_tokens] * rows
            for k in variants:  # warm-up
                run_refill(model, prompts[:batch], [8] * batch, batch, draft_tokens=k)
            rates = {k: [] for k in variants}
            choices: dict[int, int] = {}
            probes, acceptance = 0, []
            for repeat in range(args.repeats):
                order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
                for k in order:
                    stats = SchedulerStats()
                    n, s = run_refill(model, prompts, caps, batch, draft_tokens=k, stats=stats)
                    rates[k].append(n / s)
                    if k == "auto":
                        for j, count in stats.draft_lengths.items():
                            choices[j] = choices.get(j, 0) + count
                        probes += stats.cost_probes
                    elif k:
                        acceptance.append(stats.acceptance)
            medians = {k: statistics.median(v) for k, v in rates.items()}
            best = max((k for k in variants if k != "auto"), key=lambda k: medians[k])
            over_best = [a / b for a, b in zip(rates["auto"], rates[best])]
            over_plain = [a / b for a, b in zip(rates["auto"], rates[0])]
            print(f"\nbatch {batch}: {rows} rows; acceptance of fixed k {spread(acceptance)}")
            print("| k | tokens/s | / k=0 |")
            print("|---|---|---|")
            for k in variants:
                print(f"| {k} | {spread(rates[k], 1)} | {spread([a / b for a, b in zip(rates[k], rates[0])])} |")
            print(f"auto / best fixed (k={best}): {spread(over_best)}; auto / k=0: {spread(over_plain)}; "
                  f"auto ran k: {dict(sorted(choices.items()))} iterations, {probes} cost probes")
            summary.append(("4", f"auto / best fixed k (k={best}), batch {batch}", spread(over_best), ">= 0.90 at batch 1"))
            summary.append(("4", f"auto / k=0, batch {batch}", spread(over_plain), ">= 0.95 at batch 16 (CPU)"))
    for row in summary:
        print("SUMMARY\t" + "\t".join(row))


if __name__ == "__main__":
    main()
