"""Prefill each prompt once whatever num_samples (engine/prefix.py) against a prefill per sample (today's path).

    .venv/bin/python benchmarks/bench_prefix.py [--prompt-len 512] [--samples 8] [--max-new-tokens 64]
        [--prompts 2] [--batch 16] [--device cpu] [--dtype float32] [--repeats 3]

Random-weight Qwen2 theta and teacher (no download); every prompt's n samples come prompt-major, as
`num_samples` orders them; rows run to their cap. Modes alternate for --repeats rounds after a warm-up;
reported: records/s per mode, the per-round ratio shared / per-sample, the prompt tokens each model ran
per prompt (SchedulerStats), and whether both modes gave the same tokens.
"""

from __future__ import annotations

import argparse

import engine_rows
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    engine_rows.add_model_args(ap)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    theta, teacher = engine_rows.build(args, 0), engine_rows.build(args, 1)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.prompts)]
    hinted = [p + torch.randint(0, args.vocab, (16,), generator=gen).tolist() for p in prompts]
    n = args.samples
    rows = lambda: engine_rows.requests([p for p in prompts for _ in range(n)],  # noqa: E731
                                        [p for p in hinted for _ in range(n)], range(len(prompts) * n))
    times = {True: [], False: []}
    outputs, stats = {}, {}
    for round_ in range(args.repeats + 1):
        for share in (False, True) if round_ % 2 else (True, False):
            seconds, outputs[share], stats[share] = engine_rows.run(theta, teacher, rows(), args.vocab, args.batch,
                                                                    args.max_new_tokens, share_prompts=share)
            if round_:  # round 0 warms up
                times[share].append(seconds)
    records = len(prompts) * n
    rate = {share: [records / t for t in ts] for share, ts in times.items()}
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"prefix sharing: {args.prompts} prompts x {n} samples, prompt {args.prompt_len} tokens, "
          f"{args.max_new_tokens} new, batch {args.batch}, hidden {args.hidden}, layers {args.layers}, "
          f"{args.device}/{args.dtype}, threads {torch.get_num_threads()}")
    for share, name in ((False, "prefill per sample"), (True, "prefill per prompt")):
        s = stats[share]
        print(f"  {name:18s}: {engine_rows.spread(rate[share], 2)} records/s; prompt tokens per prompt: "
              f"theta {s.prompt_tokens_theta / len(prompts) / args.prompt_len:.2f}x, "
              f"teacher {s.prompt_tokens_t / len(prompts) / (args.prompt_len + 16):.2f}x")
    print(f"  speed-up (shared / per sample): {engine_rows.spread(ratios, 2)}, {len(ratios)} rounds; "
          f"same tokens: {outputs[True] == outputs[False]}")
    engine_rows.write_json(args.json, {
        "records_per_s": {"per_sample": rate[False], "per_prompt": rate[True]}, "speedup": ratios,
        "prompt_tokens_per_prompt": {str(share): [stats[share].prompt_tokens_theta / len(prompts) / args.prompt_len,
                                                  stats[share].prompt_tokens_t / len(prompts) / (args.prompt_len + 16)]
                                     for share in (False, True)},
        "same_tokens": outputs[True] == outputs[False], "args": vars(args)})


if __name__ == "__main__":
    main()
