"""Eager (dynamic caches) against compiled fixed-slot decoding (`models.compile`), on a recipe's models.

    .venv/bin/python benchmarks/bench_compile.py --config RECIPE.yaml [--batch-size 16] [--prompts 32]
        [--max-new-tokens 64] [--repeats 3]

On this project's shared 2-core CPU run it with OMP_NUM_THREADS=1 (two threads on tiny models
measure contention, not the step: spreads of 10x and more). scripts/gpu_check.sh runs it on
random-weight Qwen2.5-1.5B / 3B-shaped models in bf16 on CUDA (CUDA graphs). Both runs use sdpa
attention, the same prompts (varied lengths) and equal work: EOS is ignored and every row generates
exactly --max-new-tokens tokens, with continuous refill at --batch-size rows. The first call of each
mode is a warm-up (the compiled one includes compiling). Then the modes alternate for --repeats rounds; reported: generated tokens/s per mode, median (min-max), the per-round ratio
compiled / eager, and the share of rows whose tokens are identical in both modes (float rounding
differs between compiled and eager kernels, so in bf16 a row may take another token somewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli.api.build import build_model  # noqa: E402
from os_cli.recipe import load_recipe  # noqa: E402


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def prompts_of(n: int) -> list[str]:
    return [f"Question {i}: what is {i} plus {i + 3}? " + "Explain step by step. " * (1 + i % 5) for i in range(n)]


def timed(model, mode, prompts, args) -> tuple[float, torch.Tensor]:
    model.compile = mode
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = model.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                         seed=list(range(len(prompts))), ignore_eos=True, skip_decode=True,
                         return_diagnostics=False)
    sync()
    return time.perf_counter() - start, out.generated_ids.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = load_recipe(args.config, [])
    model = build_model(recipe, attn_implementation="sdpa")  # the attention compile uses, in both modes
    prompts = prompts_of(args.prompts)
    tokens = args.prompts * args.max_new_tokens
    print(f"device {model.device}, dtype {model.dtype}, batch {args.batch_size}, {args.prompts} prompts x "
          f"{args.max_new_tokens} tokens (EOS ignored), torch {torch.__version__}")
    warm = {}
    for mode in (False, True):
        warm[mode], _ = timed(model, mode, prompts, args)  # all prompts: the cache is sized for the longest
    print(f"warm-up: eager {warm[False]:.1f} s, compiled {warm[True]:.1f} s (compiling included)")
    rates: dict = {False: [], True: []}
    ratios, same = [], []
    for _ in range(args.repeats):
        seconds, ids = {}, {}
        for mode in (False, True):
            seconds[mode], ids[mode] = timed(model, mode, prompts, args)
            rates[mode].append(tokens / seconds[mode])
        ratios.append(seconds[False] / seconds[True])
        same.append(float((ids[False] == ids[True]).all(dim=1).float().mean()))
    print(f"{'mode':<10} {'tokens/s median (min-max)':>30}")
    print(f"{'eager':<10} {spread(rates[False], 1):>30}")
    print(f"{'compiled':<10} {spread(rates[True], 1):>30}")
    print(f"speed-up compiled / eager per round: {spread(ratios)}")
    print(f"rows with identical tokens: {spread(same, 2)}")


if __name__ == "__main__":
    main()
