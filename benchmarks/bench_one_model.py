"""One model, two prompt sets (a hinted teacher): two streams of B rows vs one stacked batch of 2B.

Times a cached decode step of a random-weight Qwen2 (no download) both ways, interleaved, and prints
the median and spread of the ratio stacked / two-streams. Usage:
    python benchmarks/bench_one_model.py [--batch 16] [--hidden 512] [--layers 8] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM


def prefilled(model, batch: int, prompt_len: int):
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def step(model, cache, batch: int, pos: int):
    ids = torch.randint(0, model.config.vocab_size, (batch, 1))
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
          position_ids=torch.full((batch, 1), pos))
    cache.crop(-1)  # keep the cache length fixed so every timing sees the same work


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2)
    model = Qwen2ForCausalLM(config).eval()
    b, n = args.batch, args.prompt_len
    with torch.inference_mode():
        two = [prefilled(model, b, n), prefilled(model, b, n)]
        stacked = prefilled(model, 2 * b, n)
        ratios, t_two, t_stacked = [], [], []
        for _ in range(args.repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            for _ in range(5):
                step(model, two[0], b, n)
                step(model, two[1], b, n)
            t1 = time.perf_counter()
            for _ in range(5):
                step(model, stacked, 2 * b, n)
            t2 = time.perf_counter()
            t_two.append((t1 - t0) / 5)
            t_stacked.append((t2 - t1) / 5)
            ratios.append((t2 - t1) / (t1 - t0))
    ratios, t_two, t_stacked = ratios[1:], t_two[1:], t_stacked[1:]
    print(f"batch {b}, hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, prompt {n}")
    print(f"two streams: {statistics.median(t_two) * 1e3:.1f} ms/step; stacked: "
          f"{statistics.median(t_stacked) * 1e3:.1f} ms/step")
    print(f"stacked / two streams: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
