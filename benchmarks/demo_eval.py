"""What optimal sampling buys on the built-in demo pair: accuracy and theta-likelihood of samples.

    .venv/bin/python benchmarks/demo_eval.py                      # 500 problems: 14-20 s on 2 idle CPU cores
    .venv/bin/python benchmarks/demo_eval.py --problems 100 --device cuda
    .venv/bin/python benchmarks/demo_eval.py --theta /tmp/new/demo-theta --teacher /tmp/new/demo-teacher

On the held-out demo problems (os_cli/builtin/demo-problems.jsonl) it samples one completion per
problem, at temperature 1 and with the same seed, from:
  - theta alone          (alpha fixed at 0: q* = pi_theta)
  - the teacher alone    (alpha fixed at 1: q* = pi_t)
  - q* with kl_symmetry  (alpha per token in [0.5, 1], the recipe default)
  - q* with alpha 0.5    (fixed)
and, with the hint the pair was trained to read (the reference solution after the question, " Solution:
...", scripts/train_demo.py's HINT_TEMPLATE, on the side of the model called the teacher only; theta's
prompt stays the bare question):
  - theta alone, hinted              (one model; alpha fixed at 1 on its hinted prompt)
  - teacher alone, hinted            (alpha fixed at 1)
  - q* self-teacher (one model)      (kl_symmetry; the teacher is theta itself, shown the hint)
  - q* hinted teacher                (kl_symmetry; the teacher model, shown the hint)
and reports answer accuracy (the last \\boxed{...} equals the reference answer), the mean per-token
log pi_theta of the sampled tokens (how natural the text is for theta: higher is closer to what
theta would write itself), the same per sequence, the mean alpha, the share of completions in theta's
terse style, mean length and EOS rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from sample_training import hint_question  # noqa: E402  (scripts/train_demo.py's HINT_TEMPLATE)

from os_cli import OptimalSamplingModel  # noqa: E402
from os_cli.models.loading import resolve_model_path  # noqa: E402
from os_cli.report.answers import last_boxed  # noqa: E402

PROBLEMS_FILE = Path(__file__).resolve().parents[1] / "os_cli" / "builtin" / "demo-problems.jsonl"

THETA_ALONE = dict(alpha_method="fixed", fixed_alpha=0.0, alpha_min=0.0, alpha_max=0.0)
TEACHER_ALONE = dict(alpha_method="fixed", fixed_alpha=1.0, alpha_min=1.0, alpha_max=1.0)
KL_SYMMETRY = dict(alpha_method="kl_symmetry", alpha_min=0.5, alpha_max=1.0)
# name: (OptimalSamplingModel keywords, who is the teacher, whether the teacher's prompt has the hint)
SETTINGS = {
    "theta alone": (THETA_ALONE, "teacher", False),
    "teacher alone": (TEACHER_ALONE, "teacher", False),
    "q* kl_symmetry": (KL_SYMMETRY, "teacher", False),
    "q* fixed 0.5": (dict(alpha_method="fixed", fixed_alpha=0.5, alpha_min=0.5, alpha_max=0.5), "teacher", False),
    "theta alone, hinted": (TEACHER_ALONE, "theta", True),
    "teacher alone, hinted": (TEACHER_ALONE, "teacher", True),
    "q* self-teacher (one model)": (KL_SYMMETRY, "theta", True),
    "q* hinted teacher": (KL_SYMMETRY, "teacher", True),
}


def load_problems(limit: int) -> list[dict]:
    with open(PROBLEMS_FILE) as f:
        return [json.loads(line) for line in f][:limit]


def evaluate(setting: tuple, problems: list[dict], args) -> dict:
    kwargs, teacher, hinted = setting
    model = OptimalSamplingModel(
        model_theta_path=args.theta, model_t_path=args.theta if teacher == "theta" else args.teacher,
        dtype=torch.float32, device=args.device, **kwargs
    )

    # Both models were trained on this chat format; the prompt ends by opening the assistant turn.
    def chat(question: str) -> str:
        return model.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                   add_generation_prompt=True)

    prompts = [chat(p["question"]) for p in problems]
    prompts_t = [chat(hint_question(p)) for p in problems] if hinted else None
    started = time.time()
    out = model.generate(prompts, prompts_t=prompts_t, max_new_tokens=args.max_new_tokens, temperature=1.0,
                         seed=args.seed, batch_size=args.batch_size)
    seconds = time.time() - started
    correct = [(last_boxed(text) or "").strip() == p["answer"] for text, p in zip(out.generated_texts, problems)]
    logp_theta = out.logprobs["theta"]
    return {
        "accuracy": sum(correct) / len(problems),
        "logp_theta_per_token": float(logp_theta[out.mask].mean()),
        "logp_theta_per_sequence": float(torch.nansum(logp_theta, dim=1).mean()),
        "alpha_mean": float(out.alpha_values[out.mask].mean()),
        "tokens_mean": float(out.lengths.float().mean()),
        "eos_rate": sum(r == "eos" for r in out.finish_reasons) / len(problems),
        # theta only writes the terse style, which opens with the first equation (so with a digit).
        "terse_share": sum(text.lstrip()[:1].isdigit() for text in out.generated_texts) / len(problems),
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500, help="how many held-out problems (at most 500)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--theta", default="builtin:demo-theta", help="e.g. a freshly retrained pair")
    parser.add_argument("--teacher", default="builtin:demo-teacher")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the demo's target: a 2-core laptop
    transformers.utils.logging.disable_progress_bar()

    problems = load_problems(args.problems)
    print(f"{len(problems)} demo problems, theta {resolve_model_path(args.theta)}, "
          f"teacher {resolve_model_path(args.teacher)}, seed {args.seed}, temperature 1\n")
    header = f"{'sampler':<28} {'accuracy':>8} {'logp_theta/tok':>14} {'logp_theta/seq':>14} " \
             f"{'alpha':>6} {'terse':>6} {'tokens':>6} {'eos':>5} {'secs':>5}"
    print(header)
    print("-" * len(header))
    results = {}
    for name, setting in SETTINGS.items():
        r = results[name] = evaluate(setting, problems, args)
        print(f"{name:<28} {r['accuracy']:>8.1%} {r['logp_theta_per_token']:>14.3f} "
              f"{r['logp_theta_per_sequence']:>14.2f} {r['alpha_mean']:>6.2f} {r['terse_share']:>6.0%} {r['tokens_mean']:>6.1f} "
              f"{r['eos_rate']:>5.0%} {r['seconds']:>5.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
