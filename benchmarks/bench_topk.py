"""What `output.topk_logprobs: K` costs per decoding step, next to the step itself.

    .venv/bin/python benchmarks/bench_topk.py                       # batch 16, vocab 151936, K 20, CPU
    .venv/bin/python benchmarks/bench_topk.py --device cuda --rounds 30

Synthetic correlated logits at LLM vocabulary size (as bench_alpha.py builds them). Each round
times, for `topk_of` [t] and then [t, theta, q]: the q* step (`sampler.mixture_step`, kl_symmetry,
keyed draws), then `topk.topk_columns` on its output. Reported: the top-k's time as a fraction of
the step it follows, median and spread (min, max) over the rounds. The model forwards, which
dominate a real step, are not included, so this is an upper bound of the relative cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli import rng  # noqa: E402
from os_cli.mix.sampler import SamplerConfig, mixture_step  # noqa: E402
from os_cli.mix.topk import topk_columns, topk_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    shared = 3.0 * torch.randn(args.batch, args.vocab, generator=g)
    theta = (shared + torch.randn(args.batch, args.vocab, generator=g)).to(args.device)
    teacher = (shared + 1.5 * torch.randn(args.batch, args.vocab, generator=g)).to(args.device)
    keys = rng.row_keys(torch.arange(args.batch)).to(args.device)
    steps = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    config = SamplerConfig()
    specs = {"[t]": topk_spec(args.k, ["t"], args.vocab), "[t, theta, q]": topk_spec(args.k, ["t", "theta", "q"],
                                                                                     args.vocab)}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - start, result

    ratios = {name: [] for name in specs}
    step_times = []
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, spec in specs.items():  # per round: a step, then its top-k, for each setting
            t_step, out = timed(lambda: mixture_step(theta, teacher, config, row_keys=keys, step=steps))
            t_topk, _ = timed(lambda: topk_columns(spec, 1.0, theta[:, None], teacher[:, None], out.logq[:, None],
                                                   out.fallback[:, None]))
            if round_:
                step_times.append(t_step)
                ratios[name].append(t_topk / t_step)
    print(f"batch {args.batch}, vocab {args.vocab}, K {args.k}, {args.device}, {args.rounds} rounds (interleaved)")
    print(f"q* step: median {statistics.median(step_times) * 1e3:.1f} ms")
    for name, values in ratios.items():
        print(f"top-k {name}: {statistics.median(values):.1%} of the step's time "
              f"(min {min(values):.1%}, max {max(values):.1%})")

if __name__ == "__main__":
    main()
