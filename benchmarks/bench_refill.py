"""Continuous refill on a long-tailed workload, against the two-model floor's full-batch rate.

    nice -n 10 .venv/bin/python benchmarks/bench_refill.py                 # 96 rows, batch 16, 256 tokens
    nice -n 10 .venv/bin/python benchmarks/bench_refill.py --repeats 5 --vocab 32768

Models: a random-weight Qwen2 pair built offline in a temporary folder (no download): theta
hidden 128 x 2 layers, teacher hidden 256 x 4 layers (about 4x theta's cost per token), with
embeddings padded to --vocab rows (151936 = Qwen2.5's makes each forward pay a Qwen-sized LM head;
the default 360 keeps a run short on a shared 2-core machine). Their tokenizer is the test suite's
360-token BPE, so the q* step works on 360 columns: this measures scheduling, not the solver.

Workload ("long-tail"): --rows prompts, each with a token cap drawn (fixed seed) from a
log-normal with median 60 and sigma 0.9, clamped to [8, --max-new-tokens]: mean about 90 tokens,
a few rows at the cap. EOS is disabled, so every row ends exactly at its cap under every loop.

Timed, interleaved in each repeat (after one warm-up), the floor first, then --variants:
  floor   both models' cached forwards plus plain sampling from theta, --batch rows always in
          flight, --max-new-tokens each: the full-batch rate every loop is compared to
  refill  the q* engine (kl_symmetry) with continuous refill at --batch on the workload, the
          default admission (longest token cap first from a window of 4 x batch rows read ahead)
  refill-input   the same in input order (admission="input_order"; what issue 9 measured)
  refill-admit1  longest-first, prefilling as soon as one slot is free (admit_min=1, not batch/4)
  static  the reference loop (fixed micro-batches of --batch, each until its longest row ends)
  refill-theta  refill with the floor's plain sampling: scheduling alone, without the q* solver
Reported: generated tokens/s, ratio to the floor of the same repeat (median and min-max over
repeats) in wall time and in this process's CPU time (with --threads 1 the CPU time counts the
work done and is much less sensitive to other jobs on a shared machine), and slot occupancy
(mean rows in flight / batch) from the engine's counters; then each refill loop's time split (decode,
mixing, prefill/join, host: engine/phase_clock.py) and `SUMMARY` lines for scripts/gpu_check.sh.
--device / --dtype / --theta-shape / --teacher-shape size the pair for a GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from os_cli import OptimalSamplingModel  # noqa: E402
from os_cli.engine import scheduler, streams as engine  # noqa: E402
from os_cli.engine.phase_clock import PHASES, PhaseClock  # noqa: E402
from os_cli.engine.settings import DecodeSettings  # noqa: E402
from os_cli.memory import model_devices, sync  # noqa: E402
from os_cli.mix import rng  # noqa: E402
from os_cli.toy import build_tokenizer, save_tiny_model, tiny_qwen2_config  # noqa: E402

CORPUS = [
    "What is 2 plus 3? The answer is 5. \\boxed{5}",
    "Explain quantum computing in one sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: Paris.",
] * 8 + [f"Question {i}: {i} plus {i + 3} equals {2 * i + 3}." for i in range(120)]


def build_pair(root: Path, vocab: int, theta_shape=(128, 2, 384), teacher_shape=(256, 4, 768),
               teacher_from_theta: float | None = None) -> tuple[str, str]:
    """Save a random theta/teacher pair under `root`; returns their paths.

    `teacher_from_theta=s`: the teacher is theta's own layers followed by extra layers whose
    output projections are scaled by s (so q* and pi_theta stay close and drafts get accepted).
    """
    tok = build_tokenizer(CORPUS, vocab_size=360)
    pad_to = max(1, vocab)

    def config(hidden, layers, inter):
        cfg = tiny_qwen2_config(tok, hidden_size=hidden, num_layers=layers, num_heads=max(4, hidden // 64),
                                num_kv_heads=2, intermediate_size=inter, max_position_embeddings=2048)
        cfg.vocab_size = pad_to if vocab > len(tok) else len(tok)
        return cfg

    theta = save_tiny_model(root / "theta", tok, config(*theta_shape), seed=1, init_std=0.02)
    if teacher_from_theta is None:
        teacher = save_tiny_model(root / "teacher", tok, config(*teacher_shape), seed=2, init_std=0.02)
        return str(theta), str(teacher)
    from transformers import Qwen2ForCausalLM

    small = Qwen2ForCausalLM.from_pretrained(theta)
    cfg = config(theta_shape[0], teacher_shape[1], theta_shape[2])
    big = Qwen2ForCausalLM(cfg)
    big.load_state_dict(small.state_dict(), strict=False)  # embeddings, head, norm, layers 0..n-1
    torch.manual_seed(3)
    for layer in big.model.layers[theta_shape[1]:]:
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            proj.weight.data.normal_(0.0, teacher_from_theta)
    big.generation_config = small.generation_config
    big.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return str(theta), str(root / "teacher")


def long_tail_caps(rows: int, max_new_tokens: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    draws = torch.exp(math.log(60.0) + 0.9 * torch.randn(rows, generator=g))
    return [int(x) for x in draws.round().clamp(8, max_new_tokens)]


def requests(model: OptimalSamplingModel, prompts: list[str], caps: list[int], seed: int = 0):
    keys = rng.row_keys(torch.arange(len(prompts)) + seed).tolist()
    return [scheduler.RowRequest(i, model._token_ids(p, "prompts", i), model._token_ids(p, "prompts_t", i, teacher=True),
                                 keys[i], caps[i]) for i, p in enumerate(prompts)]


def run_refill(model, prompts, caps, batch, sample_from="mixture", draft_tokens=0, stats=None,
               admit_min=None, admission="longest_first") -> tuple[int, float]:
    """Tokens generated and seconds, through the engine's one batching loop, EOS disabled."""
    return timed_refill(model, prompts, caps, batch, sample_from, draft_tokens, stats, admit_min, admission)[:2]


def timed_refill(model, prompts, caps, batch, sample_from="mixture", draft_tokens=0, stats=None,
                 admit_min=None, admission="longest_first") -> tuple[int, float, float]:
    """`run_refill` plus this process's CPU seconds."""
    config = model._sampler_config(1.0, -1, 1.0)
    sync(model_devices(model))
    start, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    settings = DecodeSettings(max_new_tokens=max(caps), eos_ids=(), pad_id=model.tokenizer.pad_token_id,
                              config=config, draft_tokens=draft_tokens, admit_min=admit_min, admission=admission)
    for result in scheduler.decode_rows(
        requests(model, prompts, caps), model.model_theta, model.model_t, model.vocab_size,
        model._step_fn(config, sample_from), settings, limit=batch, stats=stats,
    ):
        tokens += len(result.tokens)
    sync(model_devices(model))
    return tokens, time.perf_counter() - start, time.process_time() - cpu


VARIANTS = {  # name -> run_refill keyword arguments ("static" runs the reference loop)
    "refill": {},
    "refill-input": {"admission": "input_order"},
    "refill-admit1": {"admit_min": 1},
    "refill-input-admit1": {"admission": "input_order", "admit_min": 1},
    "refill-theta": {"sample_from": "theta"},
    "static": None,
}


def run_static(model, prompts, caps, batch) -> tuple[int, float, float]:
    """The reference loop: micro-batches of `batch`, a row leaves at its cap, the batch waits for its longest."""
    config = model._sampler_config(1.0, -1, 1.0)
    step_fn = model._step_fn(config, "mixture")
    keys = rng.row_keys(torch.arange(len(prompts)))
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for lo in range(0, len(prompts), batch):
        part_caps, part_keys = caps[lo:lo + batch], keys[lo:lo + batch]
        trace = engine.decode(
            engine.ModelStream(model.model_theta, model.vocab_size), engine.ModelStream(model.model_t, model.vocab_size),
            model.encode(prompts[lo:lo + batch]), model.encode(prompts[lo:lo + batch], teacher=True),
            lambda a, b, rows, step, k=part_keys: step_fn(a, b, k[rows], torch.full_like(rows, step)),
            DecodeSettings(max_new_tokens=max(part_caps), eos_ids=(), pad_id=model.tokenizer.pad_token_id,
                           config=config, stop_fn=lambda row, ids, c=part_caps: len(ids) >= c[row]),
        )
        tokens += int(trace.lengths.sum())
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=360)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--theta-shape", default="128x2x384", help="hidden x layers x intermediate")
    parser.add_argument("--teacher-shape", default="256x4x768")
    parser.add_argument("--variants", default="refill,refill-input,refill-admit1",
                        help=f"comma-separated, of {', '.join(VARIANTS)} (the floor always runs)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = long_tail_caps(args.rows, args.max_new_tokens)
    prompts = [CORPUS[i % len(CORPUS)][: 20 + (7 * i) % 40] for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        shapes = [tuple(int(x) for x in text.split("x")) for text in (args.theta_shape, args.teacher_shape)]
        theta, teacher = build_pair(Path(tmp), args.vocab, *shapes)
        model = OptimalSamplingModel(theta, teacher, device=args.device, dtype=getattr(torch, args.dtype))
        print(f"workload: {args.rows} rows, caps mean {statistics.mean(caps):.1f}, median "
              f"{statistics.median(caps)}, max {max(caps)}, at cap {sum(c == args.max_new_tokens for c in caps)}; "
              f"batch {args.batch}; vocab {args.vocab}; threads {torch.get_num_threads()}; {args.device} {args.dtype}")
        floor_prompts = prompts[: args.batch]
        full = [args.max_new_tokens] * args.batch
        run_refill(model, floor_prompts, [8] * args.batch, args.batch, "theta")  # warm-up
        run_refill(model, prompts[:args.batch], caps[:args.batch], args.batch)
        rates = {name: [] for name in ["floor"] + variants}
        cpu_rates = {name: [] for name in ["floor"] + variants}  # tokens per CPU second of this process
        occupancy = {name: [] for name in variants}
        split = {name: {phase: [] for phase in PHASES} for name in variants}  # share of the call's time
        for repeat in range(args.repeats):
            n, s, c = timed_refill(model, floor_prompts, full, args.batch, "theta")
            rates["floor"].append(n / s)
            cpu_rates["floor"].append(n / c)
            for name in variants:
                stats = scheduler.SchedulerStats(clock=PhaseClock(model_devices(model)))
                if name == "static":
                    n, s, c = run_static(model, prompts, caps, args.batch)
                else:
                    n, s, c = timed_refill(model, prompts, caps, args.batch, stats=stats, **VARIANTS[name])
                    occupancy[name].append(stats.occupancy(args.batch))
                    for phase, share in stats.clock.shares().items():
                        split[name][phase].append(share)
                rates[name].append(n / s)
                cpu_rates[name].append(n / c)
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()), flush=True)
        print()
        summary = []
        print("| loop | tokens/s (wall) | / floor (wall) | / floor (CPU time) | occupancy |")
        print("|---|---|---|---|---|")
        print(f"| floor (full batch) | {spread(rates['floor'], 0)} | 1 | 1 | 1 |")
        for name in variants:
            ratios = [a / b for a, b in zip(rates[name], rates["floor"])]
            cpu_ratios = [a / b for a, b in zip(cpu_rates[name], cpu_rates["floor"])]
            occ = spread(occupancy[name]) if occupancy[name] else "-"
            print(f"| {name} | {spread(rates[name], 0)} | {spread(ratios)} | {spread(cpu_ratios)} | {occ} |")
            summary.append(("3", f"{name} / floor (wall), threads {torch.get_num_threads()}", spread(ratios),
                            ">= 0.80"))
            summary.append(("3", f"{name} occupancy", occ, ""))
        print("\ntime split of the refill loops (share of each call's wall time, median over repeats; phases: "
              "engine/phase_clock.py)")
        print("| loop | " + " | ".join(PHASES) + " |")
        print("|---" * (len(PHASES) + 1) + "|")
        for name in variants:
            if split[name]["decode"]:
                shares = [f"{statistics.median(split[name][p]):.2f}" for p in PHASES]
                print(f"| {name} | " + " | ".join(shares) + " |")
                summary.append(("3", f"{name} time split {' / '.join(PHASES)}", " / ".join(shares), ""))
        for row in summary:
            print("SUMMARY\t" + "\t".join(row))


if __name__ == "__main__":
    main()
