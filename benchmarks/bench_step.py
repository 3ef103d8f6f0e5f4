"""The mixing step against the two-model floor, on a 151936-token pair built offline.

    nice -n 10 .venv/bin/python benchmarks/bench_step.py                  # batch 16, 48 steps, 5 rounds
    .venv/bin/python benchmarks/bench_step.py --device cuda --dtype bfloat16 --repeats 10

Two random-weight Qwen2 models (no download, nothing saved) share Qwen2.5's vocabulary size:
theta (hidden 256, 2 layers, ~81M parameters) and a teacher about 3-4x its forward cost (hidden 768,
4 layers). Their output layers are rescaled so that logits have a standard deviation of about 3 and
the two models are correlated (a shared component), as two related LMs are: the solvers then face
realistic, non-uniform distributions.

Every variant runs the real decode loop (`engine.decode`, two KV-cached `ModelStream`s, keyed draws,
diagnostics and log-probs recorded), EOS disabled so every row runs exactly --steps tokens:
- floor: `mixture_step(sample_from="teacher")`: both forwards, log-softmax, diagnostics, a keyed draw,
  no alpha solve and no mix (what `os-sample bench --compare` calls the floor);
- one row per alpha method with the fast solvers (warm-started from each row's previous alpha, as
  `api.generate` does), and the same method with the reference solvers (`solver="reference"`).
Variants are interleaved within each round (drift hits all of them); the table gives per-round
ratios to that round's floor: median and min-max over rounds, for wall time and for this process's
CPU time (`time.process_time`; with --threads 1 it counts the work done and is much less sensitive
to other processes competing for the cores than wall time is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli.engine import streams as engine  # noqa: E402
from os_cli.mix import rng  # noqa: E402
from os_cli.engine.settings import DecodeSettings  # noqa: E402
from os_cli.mix.sampler import SamplerConfig, mixture_step  # noqa: E402

VOCAB = 151936


def build_pair(device: str, dtype: torch.dtype, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def config(hidden: int, layers: int, heads: int, inter: int) -> Qwen2Config:
        return Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=max(1, heads // 4), intermediate_size=inter,
                           max_position_embeddings=4096, tie_word_embeddings=False)

    torch.manual_seed(seed)
    theta = Qwen2ForCausalLM(config(256, 2, 4, 704))
    teacher = Qwen2ForCausalLM(config(768, 4, 12, 2048))
    # Correlated output layers with logits of std ~3: a shared direction through a random projection.
    g = torch.Generator().manual_seed(seed + 1)
    shared = torch.randn(VOCAB, 64, generator=g)
    with torch.no_grad():
        for model, noise in ((theta, 1.0), (teacher, 1.5)):
            hidden = model.config.hidden_size
            proj = torch.randn(64, hidden, generator=g) / 64**0.5
            head = shared @ proj + noise * torch.randn(VOCAB, hidden, generator=g) / 2
            model.lm_head.weight.copy_(head * (3.0 / hidden**0.5) * 4)
    out = []
    for model in (theta, teacher):
        model.to(device=device, dtype=dtype).eval()
        out.append(model)
    return out


def parameters(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M"


def run(theta, teacher, prompt, steps: int, config: SamplerConfig, sample_from: str, solver: str, warm: bool,
        device) -> tuple[float, float]:
    batch = prompt[0].shape[0]
    keys = rng.row_keys(torch.arange(batch, dtype=torch.int64)).to(device)
    state = torch.full((batch,), float("nan"), device=device)

    def step_fn(logits_theta, logits_t, rows, step):
        out = mixture_step(logits_theta, logits_t, config, row_keys=keys[rows], step=step, sample_from=sample_from,
                           solver=solver, alpha_init=state[rows] if warm else None)
        if warm:
            state[rows] = out.alpha_solved
        return out

    s_theta, s_t = engine.ModelStream(theta, VOCAB), engine.ModelStream(teacher, VOCAB)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    trace = engine.decode(s_theta, s_t, prompt, prompt, step_fn,
                          DecodeSettings(max_new_tokens=steps, eos_ids=(), pad_id=0, config=config))
    assert int(trace.lengths.min()) == steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--methods", default="fixed,kl_symmetry,ess_balance")
    parser.add_argument("--reference", action="store_true", help="also time the reference solvers")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    theta, teacher = build_pair(args.device, getattr(torch, args.dtype))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (args.batch, args.prompt_len), generator=g).to(device)
    prompt = (ids, torch.ones_like(ids))

    variants = [("floor", "teacher", "kl_symmetry", "fast", False)]
    for method in args.methods.split(","):
        variants.append((method, "mixture", method, "fast", True))
        if args.reference and method != "fixed":
            variants.append((f"{method} (reference)", "mixture", method, "reference", False))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in variants}
    for name, sample_from, method, solver, warm in variants:  # warm-up
        run(theta, teacher, prompt, 4, SamplerConfig(alpha_method=method), sample_from, solver, warm, device)
    for _ in range(args.repeats):
        for name, sample_from, method, solver, warm in variants:
            config = SamplerConfig(alpha_method=method)
            times[name].append(run(theta, teacher, prompt, args.steps, config, sample_from, solver, warm, device))

    print(f"batch {args.batch}, vocab {VOCAB}, {args.steps} steps, theta {parameters(theta)}, "
          f"teacher {parameters(teacher)}, device {args.device}, dtype {args.dtype}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.repeats} interleaved rounds")
    print()
    print("| variant | wall ms/step | x floor (wall) | min-max | CPU ms/step | x floor (CPU) | min-max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    floor = times["floor"]
    for name, *_ in variants:
        cells = []
        for k in (0, 1):
            ratios = [t[k] / f[k] for t, f in zip(times[name], floor)]
            ms = statistics.median(t[k] for t in times[name]) / args.steps * 1e3
            cells.append(f"{ms:.1f} | {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
