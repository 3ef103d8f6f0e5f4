"""One model with hinted teacher prompts: one stacked forward of 2B rows (engine/stacked.py) against the same
weights loaded as two models (a copy, as a teacher at another path gets), end to end through the batching loop.

    .venv/bin/python benchmarks/bench_stacked.py [--batches 1 4 16 64] [--max-new-tokens 32] [--prompt-len 64]
        [--hidden 512] [--layers 8] [--vocab 151936] [--device cpu] [--dtype float32] [--repeats 3]

Random-weight Qwen2 (no download); theta's prompts and the hinted teacher prompts differ per row; rows run
to their cap (no EOS), `--rows-per-batch` x batch rows per run. Per batch size the two modes alternate for
--repeats rounds after a warm-up; reported: the per-round time ratio stacked / two models (median, min-max)
and whether both gave the same tokens.
"""

from __future__ import annotations

import argparse
import copy

import engine_rows
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    engine_rows.add_model_args(ap)
    ap.set_defaults(hidden=512, layers=8, vocab=151936)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--rows-per-batch", type=int, default=1)
    ap.add_argument("--draft-tokens", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    theta = engine_rows.build(args, 0)
    twin = copy.deepcopy(theta)  # the same weights, another model object: two streams
    gen = torch.Generator().manual_seed(0)
    print(f"one model, hinted teacher: stacked / two models; prompt {args.prompt_len}, {args.max_new_tokens} new, "
          f"hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, {args.device}/{args.dtype}, "
          f"threads {torch.get_num_threads()}, draft_tokens {args.draft_tokens}")
    results = []
    for batch in args.batches:
        n = batch * args.rows_per_batch
        lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (n,), generator=gen).tolist()
        prompts = [torch.randint(0, args.vocab, (m,), generator=gen).tolist() for m in lengths]
        hinted = [p + torch.randint(0, args.vocab, (16,), generator=gen).tolist() for p in prompts]
        rows = lambda prompts=prompts, hinted=hinted, n=n: engine_rows.requests(prompts, hinted, range(n))  # noqa: E731
        times = {"stacked": [], "two": []}
        out = {}
        for round_ in range(args.repeats + 1):
            for mode in ("stacked", "two") if round_ % 2 else ("two", "stacked"):
                seconds, out[mode], _ = engine_rows.run(theta, theta if mode == "stacked" else twin, rows(), args.vocab,
                                                        batch, args.max_new_tokens, draft_tokens=args.draft_tokens)
                if round_:  # round 0 warms up
                    times[mode].append(seconds)
        ratios = [a / b for a, b in zip(times["stacked"], times["two"])]
        print(f"  batch {batch:3d}: stacked {engine_rows.spread(times['stacked'], 2)} s, two models "
              f"{engine_rows.spread(times['two'], 2)} s; ratio {engine_rows.spread(ratios)} ({len(ratios)} rounds); "
              f"same tokens: {out['stacked'] == out['two']}")
        results.append({"batch": batch, "ratio": ratios, "seconds": times, "same_tokens": out["stacked"] == out["two"]})
    engine_rows.write_json(args.json, {"results": results, "args": vars(args)})


if __name__ == "__main__":
    main()
