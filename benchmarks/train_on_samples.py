"""Train theta on each sampler's output and measure what it learned (issue 12).

    nice -n 10 .venv/bin/python benchmarks/train_on_samples.py --quick    # 25 rows in about 30 s on 2 CPU cores
    nice -n 10 .venv/bin/python benchmarks/train_on_samples.py --train-seed 0,1,2 --details FILE
        # one data set per sampler, each cell fine-tuned with 3 training seeds: 25 min with
        # --eval-samples 2 on 2 shared CPU cores (docs/benchmarks.md)

On the built-in demo pair (os_cli/builtin/README.md):
1. Training prompts: problems from scripts/train_demo.py's generator with another seed
   (TRAIN_PROMPT_SEED), disjoint from the 500 held-out `builtin:demo-problems` (checked).
2. One completion per prompt from each sampler (SAMPLERS in benchmarks/sample_training.py: theta
   alone, teacher alone, q* fixed 0.5, kl_symmetry, ess_balance, entropy, kl_symmetry and entropy
   with a hinted teacher whose prompt is the question followed by " Solution: <reference solution>",
   and the one-model self-teacher: kl_symmetry where the teacher is theta itself shown that hinted
   prompt), same row seeds for every
   sampler, through the Python API (os_cli.OptimalSamplingModel) at temperature 1.
3. For each data set and each training seed (--train-seed, e.g. 0,1,2) a fresh copy of
   builtin:demo-theta is fine-tuned with the same budget (steps, batch, learning rate, batch order):
   plain SFT ("sft"), and, where the sampler is not theta itself, importance-weighted SFT ("is"):
   each sequence weighted by pi_theta(y)/q*(y) from the records, self-normalised over the data set
   to mean 1, clipped at --is-clip times the mean, renormalised to mean 1
   (sample_training.importance_weights); and token-level truncated importance weighting ("tis"):
   each token's NLL weighted by min(pi_theta(y_t)/q*(y_t), c), c = --tis-clip
   (sample_training.tis_weights).
4. Every fine-tuned theta is sampled alone at temperature 1 on the held-out problems
   (--eval-samples completions each, same seeds for every model) and scored with
   os_cli.report.answers' matching (what `os-sample inspect` uses).

stdout: one JSON object {"rows": [{"sampler", "weighting", "train_seed", "accuracy_before",
"accuracy_after", "logp_theta_per_token", "train_correct"}, ...]} (one row per cell and training
seed); progress and a markdown table (mean and spread over seeds) go to stderr;
--details FILE also writes the extra columns (standard errors, ESS, styles, losses, settings).
Deterministic: one thread, torch.use_deterministic_algorithms, fixed seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402

import sample_training as st  # noqa: E402

TRAIN_PROMPT_SEED = 2468  # scripts/train_demo.py uses 1234 (its training set) and 5678 (held-out)
SAMPLE_SEED = 100
EVAL_SEED = 7_000_000

FULL = dict(train_prompts=2000, steps=300, batch_size=32, lr=3e-3, eval_problems=500, eval_samples=4)
QUICK = dict(train_prompts=128, steps=20, batch_size=16, lr=3e-3, eval_problems=60, eval_samples=2)
ROW_KEYS = ("sampler", "weighting", "train_seed", "accuracy_before", "accuracy_after", "logp_theta_per_token",
            "train_correct")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"reduced sizes: {QUICK}")
    for key, value in FULL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                            help=f"default {value} (--quick: {QUICK[key]})")
    parser.add_argument("--samplers", default=",".join(st.SAMPLERS),
                        help="comma-separated subset of: " + ", ".join(st.SAMPLERS))
    parser.add_argument("--weightings", default=",".join(st.WEIGHTINGS),
                        help="comma-separated subset of: " + ", ".join(st.WEIGHTINGS) + " (theta alone: sft only)")
    parser.add_argument("--is-clip", type=float, default=10.0,
                        help="clip self-normalised importance weights at this multiple of their mean")
    parser.add_argument("--tis-clip", type=float, default=st.TIS_CLIP,
                        help="tis: cap c of the per-token ratio pi_theta/q*")
    parser.add_argument("--train-seed", default="0",
                        help="initial state and batch order of fine-tuning; a comma-separated list (0,1,2) "
                             "fine-tunes every cell once per seed on the same data")
    parser.add_argument("--sample-batch-size", type=int, default=256, help="rows per API decode batch")
    parser.add_argument("--details", type=Path, default=None, help="also write every column and the settings here")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in names if s not in st.SAMPLERS]
    if unknown or not names:
        parser.error(f"--samplers: unknown {unknown}; choose from {', '.join(st.SAMPLERS)}")
    args.samplers = names
    weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    if not weightings or set(weightings) - set(st.WEIGHTINGS):
        parser.error(f"--weightings: expected a subset of {', '.join(st.WEIGHTINGS)}, got {args.weightings!r}")
    args.weightings = [w for w in st.WEIGHTINGS if w in weightings]
    if not 1 <= args.eval_problems <= 500:
        parser.error(f"--eval-problems must be in 1..500, got {args.eval_problems}")
    for key in ("train_prompts", "steps", "batch_size", "eval_samples"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.details is not None and not args.details.parent.is_dir():
        parser.error(f"--details {args.details}: folder {args.details.parent} does not exist")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.is_clip < 1:
        parser.error(f"--is-clip must be at least 1 (the mean weight), got {args.is_clip}")
    if not args.tis_clip > 0:
        parser.error(f"--tis-clip must be positive, got {args.tis_clip}")
    try:
        args.train_seed = [int(x) for x in str(args.train_seed).split(",") if x.strip()]
    except ValueError:
        parser.error(f"--train-seed: expected integers separated by commas, got {args.train_seed!r}")
    if not args.train_seed or len(set(args.train_seed)) != len(args.train_seed):
        parser.error(f"--train-seed: expected distinct integers, got {args.train_seed}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_details(path: Path | None, settings: dict, details: list[dict]) -> None:
    """--details: every column, the settings and the per-cell summary over seeds (rewritten after
    every cell, so a run stopped early keeps what it finished)."""
    if path is not None:
        path.write_text(json.dumps({"settings": settings, "rows": details, "summary": seed_summary(details)},
                                   indent=2) + "\n")


def run(args: argparse.Namespace) -> dict:
    """The whole experiment; returns {"rows": [...], "details": [...], "settings": {...}}."""
    torch.set_num_threads(1)  # tiny models: one thread is far faster than two on a shared machine
    torch.use_deterministic_algorithms(True)
    started = time.time()
    heldout = st.heldout_problems(args.eval_problems)
    problems = st.training_prompts(args.train_prompts, TRAIN_PROMPT_SEED, st.heldout_problems())
    tokenizer = st.OptimalSamplingModel(st.THETA, None, dtype=torch.float32, device="cpu").tokenizer
    log(f"{len(problems)} training prompts (seed {TRAIN_PROMPT_SEED}, disjoint from the held-out set), "
        f"{len(heldout)} held-out problems x {args.eval_samples} samples; fine-tuning {args.steps} steps "
        f"of {args.batch_size}, lr {args.lr}, training seeds {args.train_seed}")

    def eval_model(model) -> dict:
        return st.evaluate(model, tokenizer, heldout, args.eval_samples, EVAL_SEED, args.sample_batch_size)

    before = eval_model(None)
    log(f"theta before: accuracy {before['accuracy']:.3f} +- {before['accuracy_se']:.3f} ({time.time() - started:.0f}s)")
    rows, details = [], []
    for name in args.samplers:
        data = st.sample_dataset(name, problems, SAMPLE_SEED, args.sample_batch_size)
        tokens = sum(len(s.completion_ids) for s in data)
        data_stats = {
            "logp_theta_per_token": sum(s.logp_theta for s in data) / tokens,
            "logp_q_per_token": sum(s.logp_q for s in data) / tokens,
            "train_correct": sum(s.correct for s in data) / len(data),
            "train_terse": sum(s.terse for s in data) / len(data),
            "train_tokens_mean": tokens / len(data),
        }
        log(f"{name}: data correct {data_stats['train_correct']:.3f}, log pi_theta/token "
            f"{data_stats['logp_theta_per_token']:.3f}, terse {data_stats['train_terse']:.2f} ({time.time() - started:.0f}s)")
        for weighting in [w for w in args.weightings if w == "sft" or name not in st.ON_POLICY]:
            weights = st.importance_weights(data, args.is_clip) if weighting == "is" else None
            token_weights = st.tis_weights(data, args.tis_clip) if weighting == "tis" else None
            if token_weights is not None:
                flat = torch.cat(token_weights)
                ess_share = st.effective_sample_size(flat) / len(flat)  # over tokens
                seq_weights = st.sequence_mean_weights(token_weights)
            else:
                ess_share = st.effective_sample_size(weights) / len(data) if weights is not None else 1.0
                seq_weights = weights
            for seed in args.train_seed:
                cfg = st.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed)
                model, losses = st.fine_tune(data, weights, cfg, tokenizer.pad_token_id, token_weights)
                after = eval_model(model)
                row = {"sampler": name, "weighting": weighting, "train_seed": seed,
                       "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
                       "logp_theta_per_token": data_stats["logp_theta_per_token"],
                       "train_correct": data_stats["train_correct"]}
                rows.append(row)
                details.append(row | data_stats | {
                    "accuracy_before_se": before["accuracy_se"], "accuracy_after_se": after["accuracy_se"],
                    "terse_before": before["terse"], "terse_after": after["terse"],
                    # (sum w)^2 / (n sum w^2): over sequences for is, over tokens for tis
                    "is_ess_share": ess_share,
                    "tis_token_weight_mean": float(torch.cat(token_weights).mean()) if token_weights else None,
                    "tis_clipped_share": float((torch.cat(token_weights) >= args.tis_clip).float().mean())
                    if token_weights else None,
                    # the share correct as the weighted loss sees it: sum_i w_i correct_i / sum_i w_i
                    # (for tis, w_i is the sequence's mean token weight)
                    "train_correct_weighted": st.weighted_share([s.correct for s in data], seq_weights),
                    "loss_first": losses[0], "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
                })
                write_details(args.details, {"partial": True, **{k: str(v) for k, v in vars(args).items()}}, details)
                log(f"  {weighting} seed {seed}: accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
                    f"+- {after['accuracy_se']:.3f}, terse {after['terse']:.2f}, ESS share "
                    f"{ess_share:.3f} ({time.time() - started:.0f}s)")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {
        "train_prompt_seed": TRAIN_PROMPT_SEED, "sample_seed": SAMPLE_SEED, "eval_seed": EVAL_SEED,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "seconds": round(time.time() - started, 1),
    }
    return {"rows": rows, "details": details, "settings": settings}


def seed_summary(details: list[dict]) -> list[dict]:
    """One entry per (sampler, weighting), in run order: the details of its first seed plus, over its
    training seeds, the mean accuracy after, the sample standard deviation between seeds (0 with one
    seed), the lowest and highest, and the mean standard error over problems."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for d in details:
        groups.setdefault((d["sampler"], d["weighting"]), []).append(d)
    summary = []
    for cell in groups.values():
        acc = [d["accuracy_after"] for d in cell]
        mean = sum(acc) / len(acc)
        sd = (sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) ** 0.5 if len(acc) > 1 else 0.0
        summary.append(cell[0] | {
            "seeds": [d["train_seed"] for d in cell], "accuracy_after_mean": mean, "accuracy_after_seed_sd": sd,
            "accuracy_after_min": min(acc), "accuracy_after_max": max(acc),
            "accuracy_after_se_mean": sum(d["accuracy_after_se"] for d in cell) / len(cell),
            "terse_after_mean": sum(d["terse_after"] for d in cell) / len(cell),
        })
    return summary


def markdown_table(details: list[dict]) -> str:
    """Mean over training seeds; "seed sd" is the standard deviation between seeds, "± se" the mean
    standard error over problems."""
    lines = ["| sampler | weighting | train correct | correct, as weighted | log pi_theta / token | ESS share "
             "| accuracy after (mean of seeds) | seed sd | seeds min-max | ± se | change | terse after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in seed_summary(details):
        lines.append(
            f"| {d['sampler']} | {d['weighting']} | {d['train_correct']:.1%} | {d['train_correct_weighted']:.1%} "
            f"| {d['logp_theta_per_token']:.3f} | {d['is_ess_share']:.3f} | {d['accuracy_after_mean']:.1%} "
            f"| {d['accuracy_after_seed_sd']:.1%} | {d['accuracy_after_min']:.1%}-{d['accuracy_after_max']:.1%} "
            f"| {d['accuracy_after_se_mean']:.1%} | {d['accuracy_after_mean'] - d['accuracy_before']:+.1%} "
            f"| {d['terse_after_mean']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    result = run(args)
    log(markdown_table(result["details"]))
    log(f"done in {result['settings']['seconds']:.0f}s")
    print(json.dumps({"rows": result["rows"]}), flush=True)
    write_details(args.details, result["settings"], result["details"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
