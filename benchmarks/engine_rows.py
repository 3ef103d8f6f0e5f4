"""Shared by bench_prefix.py and bench_stacked.py: random-weight Qwen2 models built from a config (no download),
token-id requests, and one timed run of the engine's batching loop (`scheduler.decode_rows`) on them."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli.engine import scheduler  # noqa: E402
from os_cli.engine.settings import DecodeSettings  # noqa: E402
from os_cli.mix import rng  # noqa: E402
from os_cli.mix.sampler import SamplerConfig, mixture_step  # noqa: E402


def add_model_args(ap) -> None:
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the results here (for scripts/gpu_check.sh)")


def write_json(path, payload) -> None:
    if path:
        import json

        Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def build(args, seed: int = 0):
    """A random-weight Qwen2 causal LM of the requested shape on args.device / args.dtype (sdpa attention)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = max(2, args.hidden // 64)
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         max_position_embeddings=4096, attn_implementation="sdpa")
    return Qwen2ForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def requests(prompts_theta, prompts_t, seeds):
    keys = rng.row_keys(torch.tensor(seeds, dtype=torch.int64)).tolist()
    return [scheduler.RowRequest(i, p, t, k) for i, (p, t, k) in enumerate(zip(prompts_theta, prompts_t, keys))]


def run(model_theta, model_t, rows, vocab: int, limit: int, max_new_tokens: int, **settings):
    """Decode `rows` (every row to its cap: no EOS); (seconds, {index: tokens}, SchedulerStats)."""
    config = SamplerConfig()
    decode = DecodeSettings(max_new_tokens=max_new_tokens, config=config, **settings)

    def step_fn(logits_theta, logits_t, keys, steps, alpha_init=None):
        return mixture_step(logits_theta, logits_t, config, row_keys=keys, step=steps, alpha_init=alpha_init)

    stats = scheduler.SchedulerStats()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = {r.index: r.tokens.tolist() for r in scheduler.decode_rows(
            rows, model_theta, model_t, vocab, step_fn, decode, limit=limit, stats=stats)}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out, stats


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"
