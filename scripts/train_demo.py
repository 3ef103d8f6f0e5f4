"""Train the embedded demo pair: two tiny Qwen2 models that share one tokenizer.

    .venv/bin/python scripts/train_demo.py     # rewrites os_cli/builtin/; ~7 min on 2 idle CPU cores

Everything is made here, offline and deterministically (fixed seeds, one process, 2 threads):
synthetic arithmetic word problems, a byte-level BPE tokenizer trained on them, and two models
trained on chat-formatted problem/solution pairs (loss on the assistant's tokens only).

- theta (the policy being trained) is small and trained briefly: it writes well-formed terse
  solutions, but its arithmetic is often wrong.
- the teacher is larger and trained three times longer: it is mostly right, and it usually writes
  a narrated solution, a style theta finds very unlikely.
- both also learn to read a hint: a quarter of their training prompts carry the reference solution
  after the question (HINT_TEMPLATE). Given the hint, each is more often right than without it, which
  is what self-distillation with privileged information (one model, the teacher being the policy
  shown the hint; recipes/self-distill.yaml) and a hinted teacher (recipes/math-hint.yaml) need.

That is what the offline quick start (`make demo`) needs to show optimal sampling: samples from
q* keep theta's style (high log pi_theta) while borrowing the teacher's correctness.

Outputs (see os_cli/builtin/README.md):
    os_cli/builtin/demo-theta/          save_pretrained model + tokenizer (float32)
    os_cli/builtin/demo-teacher/        save_pretrained model + tokenizer (float32)
    os_cli/builtin/demo-problems.jsonl  held-out problems: id, question, answer, solution
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_DIR = REPO_ROOT / "os_cli" / "builtin"

TRAIN_SEED = 1234
HELDOUT_SEED = 5678
NUM_TRAIN_PROBLEMS = 40_000
NUM_HELDOUT_PROBLEMS = 500
VOCAB_SIZE = 480
# The hinted prompt both models learn to read (and the one benchmarks/ and recipes/self-distill.yaml
# use): the reference answer, then the question.
HINT_TEMPLATE = "{question} Solution: {solution}"

# ---------------------------------------------------------------------------------------------
# Synthetic task: short arithmetic word problems with a worked solution ending in \boxed{N}.
# ---------------------------------------------------------------------------------------------

NAMES = ("Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Leo", "Zoe", "Max", "Eva", "Omar", "Ivy")
ITEMS = ("apples", "pencils", "marbles", "cookies", "stickers", "books", "shells", "coins", "cards", "eggs")
GAIN_VERBS = ("buys", "finds", "gets", "picks up")
LOSS_VERBS = ("gives away", "loses", "sells", "uses")
KINDS = ("add", "subtract", "multiply", "add_then_subtract")


def make_problems(n: int, seed: int) -> list[dict]:
    """`n` distinct word problems drawn with `random.Random(seed)`: a pure function of its arguments.

    Each problem is `{"id", "question", "answer", "solution", "narrated_solution"}`. `answer` is the
    integer result as a string. Both solutions work it out in one or two steps and end in
    `\\boxed{answer}`, in two styles: `solution` is terse (equations first: theta's style) and
    `narrated_solution` retells the story around the same equations (the teacher's usual style).
    """
    rng = random.Random(seed)
    problems: list[dict] = []
    seen: set[str] = set()
    while len(problems) < n:
        question, terse, narrated, answer = _one_problem(rng)
        if question in seen:
            continue
        seen.add(question)
        problems.append({
            "id": f"s{seed}-{len(problems):05d}", "question": question, "answer": str(answer),
            "solution": terse, "narrated_solution": narrated,
        })
    return problems


def _one_problem(rng: random.Random) -> tuple[str, str, str, int]:
    """(question, terse solution, narrated solution, answer) of one random problem."""
    kind = rng.choice(KINDS)
    name, items = rng.choice(NAMES), rng.choice(ITEMS)
    gain, loss = rng.choice(GAIN_VERBS), rng.choice(LOSS_VERBS)
    if kind == "add":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        total = a + b
        return (
            f"{name} has {a} {items} and {gain} {b} more. How many {items} does {name} have now?",
            f"{a} + {b} = {total}, so {name} has {total} {items}. \\boxed{{{total}}}",
            f"{name} starts with {a} {items} and {gain} {b} more. {a} + {b} = {total}. The answer is \\boxed{{{total}}}.",
            total,
        )
    if kind == "subtract":
        a = rng.randint(5, 24)
        b = rng.randint(1, a - 1)
        left = a - b
        return (
            f"{name} has {a} {items} and {loss} {b} of them. How many {items} does {name} have left?",
            f"{a} - {b} = {left}, so {name} has {left} {items} left. \\boxed{{{left}}}",
            f"{name} starts with {a} {items} and {loss} {b}. {a} - {b} = {left}. The answer is \\boxed{{{left}}}.",
            left,
        )
    if kind == "multiply":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        product = a * b
        return (
            f"{name} has {a} boxes with {b} {items} in each box. How many {items} does {name} have?",
            f"{a} boxes of {b} {items}: {a} * {b} = {product}, so {name} has {product} {items}. \\boxed{{{product}}}",
            f"There are {a} boxes and each box holds {b} {items}. {a} * {b} = {product}. "
            f"The answer is \\boxed{{{product}}}.",
            product,
        )
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    total = a + b
    c = rng.randint(1, total - 1)
    left = total - c
    return (
        f"{name} has {a} {items}, {gain} {b} more and then {loss} {c}. How many {items} does {name} have now?",
        f"{a} + {b} = {total}. Then {total} - {c} = {left}, so {name} has {left} {items}. \\boxed{{{left}}}",
        f"{name} starts with {a} {items} and {gain} {b} more. {a} + {b} = {total}. Then {name} {loss} {c}. "
        f"{total} - {c} = {left}. The answer is \\boxed{{{left}}}.",
        left,
    )


def hint_question(problem: dict) -> str:
    """The hinted form of a problem's question (HINT_TEMPLATE)."""
    return HINT_TEMPLATE.format(question=problem["question"], solution=problem["solution"])


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, or None."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def training_problems() -> list[dict]:
    return make_problems(NUM_TRAIN_PROBLEMS, TRAIN_SEED)


def heldout_problems(train: list[dict], n: int = NUM_HELDOUT_PROBLEMS) -> list[dict]:
    """The rows of demo-problems.jsonl: `n` problems from another seed whose questions never occur in
    `train`, numbered from 0, with the fields `id`, `question`, `answer` and (terse) `solution`."""
    train_questions = {p["question"] for p in train}
    # Over-draw so that dropping the few collisions with the training set still leaves `n`.
    candidates = make_problems(2 * n, HELDOUT_SEED)
    fresh = [p for p in candidates if p["question"] not in train_questions][:n]
    return [
        {"id": f"demo-{i:04d}", "question": p["question"], "answer": p["answer"], "solution": p["solution"]}
        for i, p in enumerate(fresh)
    ]


# ---------------------------------------------------------------------------------------------
# Tokenisation and training.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    steps: int
    learning_rate: float
    init_seed: int
    narrated_share: float  # share of training problems shown with the narrated solution, the rest terse
    hint_share: float = 0.0  # share of the main schedule's prompts that carry the hint
    # The hint phase, after the main schedule: `hint_phase_steps` more steps (0: none) on the training
    # problems with the hint on a share `hint_phase_share` of prompts, learning rate `hint_phase_lr`.
    hint_phase_steps: int = 0
    hint_phase_share: float = 0.5
    hint_phase_lr: float = 1e-3


# Sizes and schedules chosen so that, on held-out problems at temperature 1, the teacher is mostly
# right and theta often wrong. Both learn the answer format early; arithmetic clicks late (a sharp
# drop in loss), which the teacher's longer schedule gets through and theta's does not entirely.
# Styles differ too, as between real model families: theta only ever writes terse solutions; the
# teacher mostly narrates but knows the terse style as well. So teacher samples are off-policy for
# theta, and q* can follow theta's style while the teacher keeps the arithmetic right.
# Hints: both learn them within their one main schedule (a quarter of their prompts carry the
# solution). On 200 held-out problems at temperature 1 the teacher is then right 96.5% of the time
# without the hint and 100% with it; theta 39.5% and 51.0% (31.4% and 44.0% on all 500). A 200-step
# hint phase after the teacher's hint-free schedule (hint_phase_steps=200, half the prompts hinted,
# lr 1e-3) was tried first and made it worse (88% without the hint, 76% with it); it stays available.
TEACHER = ModelSpec("demo-teacher", 128, 4, 4, 2, 256, steps=3600, learning_rate=3e-3, init_seed=1, narrated_share=0.75)
THETA = ModelSpec("demo-theta", 64, 2, 4, 2, 192, steps=1200, learning_rate=3e-3, init_seed=2, narrated_share=0.0,
                  hint_share=0.25)
BATCH_SIZE = 32
WARMUP_STEPS = 100


def tokenizer_corpus_line(problem: dict) -> str:
    """The chat role names and the problem text, so both get merges. Special tokens stay out of the
    BPE corpus: the tokenizer adds them whole, they are never merged from pieces."""
    return f"user\n{problem['question']}\nassistant\n{problem['solution']}\n{problem['narrated_solution']}\n"


def chat_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the chat-formatted user turn plus the opened assistant turn (what the sampler sees)."""
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def encode_examples(tokenizer, problems: list[dict], narrated_share: float, seed: int,
                    hint_share: float = 0.0) -> list[tuple[list[int], int]]:
    """(prompt ids + solution ids + eos, prompt length) per problem: loss goes on what follows the prompt.

    Each problem appears once, with its narrated solution with probability `narrated_share`, and with
    the hinted question (hint_question) with probability `hint_share` (an independent stream, so the
    styles drawn do not depend on `hint_share`).
    """
    style_rng, hint_rng = random.Random(seed), random.Random(seed + 1_000_003)
    examples = []
    for p in problems:
        hinted = hint_rng.random() < hint_share
        prompt = chat_prompt(tokenizer, hint_question(p) if hinted else p["question"])
        solution = p["narrated_solution"] if style_rng.random() < narrated_share else p["solution"]
        completion = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt + completion, len(prompt)))
    return examples


def collate(batch: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        attention[row, : len(ids)] = 1
    return input_ids, attention, labels


def length_bucketed_batches(examples, rng: random.Random, pool_batches: int = 16):
    """Endless shuffled batches; each pool of `pool_batches` batches is sorted by length first so that
    rows of one batch have similar lengths (less padding to compute on)."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        pool_size = BATCH_SIZE * pool_batches
        for start in range(0, len(order) - pool_size + 1, pool_size):
            pool = sorted(order[start : start + pool_size], key=lambda i: len(examples[i][0]))
            batches = [pool[i : i + BATCH_SIZE] for i in range(0, pool_size, BATCH_SIZE)]
            rng.shuffle(batches)
            for batch in batches:
                yield [examples[i] for i in batch]


def train_model(spec: ModelSpec, tokenizer, examples, log_every: int = 200):
    """A fresh model trained by `optimise` for `spec.steps` at `spec.learning_rate`."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from os_cli.toy import tiny_qwen2_config

    torch.manual_seed(spec.init_seed)
    config = tiny_qwen2_config(
        tokenizer,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=256,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return optimise(model, tokenizer, examples, spec.name, spec.steps, spec.learning_rate, WARMUP_STEPS,
                    random.Random(spec.init_seed), log_every)


def optimise(model, tokenizer, examples, name: str, steps: int, learning_rate: float, warmup: int,
             rng: random.Random, log_every: int = 200):
    """AdamW with linear warmup and cosine decay to 10%, batches from one fixed shuffle stream `rng`."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = length_bucketed_batches(examples, rng)
    model.train()
    started, running_loss = time.time(), 0.0
    for step in range(steps):
        input_ids, attention, labels = collate(next(batches), tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running_loss += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            count = (step % log_every) + 1
            print(f"  {name} step {step + 1}/{steps} loss {running_loss / count:.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
            running_loss = 0.0
    model.eval()
    return model


def hint_phase(spec: ModelSpec, model, tokenizer, problems: list[dict], log_every: int = 100):
    """`spec.hint_phase_steps` more steps on `problems`, a share `spec.hint_phase_share` of them hinted
    (other streams than the main schedule's: seed init_seed + 1)."""
    examples = encode_examples(tokenizer, problems, spec.narrated_share, seed=spec.init_seed + 1,
                               hint_share=spec.hint_phase_share)
    warmup = max(1, spec.hint_phase_steps // 10)
    return optimise(model, tokenizer, examples, f"{spec.name} hint phase", spec.hint_phase_steps, spec.hint_phase_lr,
                    warmup, random.Random(spec.init_seed + 1), log_every)


def sample_stats(model, tokenizer, problems: list[dict], max_new_tokens: int = 64, seed: int = 0,
                 hinted: bool = False) -> dict:
    """Of temperature-1 samples (what the sampler draws): accuracy, share that stopped with eos and
    share in the terse style (which starts with the first equation, so with a digit). `hinted`:
    prompted with hint_question instead of the bare question."""
    import torch

    correct = stopped = terse = 0
    for start in range(0, len(problems), 50):
        chunk = problems[start : start + 50]
        prompts = [chat_prompt(tokenizer, hint_question(p) if hinted else p["question"]) for p in chunk]
        width = max(map(len, prompts))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        torch.manual_seed(seed + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=max_new_tokens,
            )
        for p, row in zip(chunk, out[:, width:].tolist()):
            stopped += tokenizer.eos_token_id in row
            text = tokenizer.decode(row, skip_special_tokens=True)
            correct += last_boxed(text) == p["answer"]
            terse += text[:1].isdigit()
    return {name: count / len(problems) for name, count in (("accuracy", correct), ("stopped", stopped), ("terse", terse))}


def report(name: str, model, tokenizer, problems: list[dict]) -> None:
    """Print `name`'s accuracy (and eos, terse shares) on `problems`, without and with the hint."""
    for hinted in (False, True):
        stats = sample_stats(model, tokenizer, problems, hinted=hinted)
        print(f"  {name}{' with the hint' if hinted else ''}: {model.num_parameters():,} parameters; held-out "
              f"samples at temperature 1: accuracy {stats['accuracy']:.1%}, stopped with eos {stats['stopped']:.1%}, "
              f"terse style {stats['terse']:.1%}", flush=True)


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILTIN_DIR, help="where to write the models and problems")
    parser.add_argument("--teacher-steps", type=int, default=TEACHER.steps)
    parser.add_argument("--theta-steps", type=int, default=THETA.steps)
    parser.add_argument("--teacher-main-from", type=Path, default=None,
                        help="skip the teacher's main schedule: load its result from this folder (e.g. the "
                             "shipped demo-teacher, made by that schedule), then run its hint phase if it has one")
    parser.add_argument("--theta-from", type=Path, default=None,
                        help="skip theta's training: load an already trained theta (e.g. DIR/demo-theta of an "
                             "earlier --out run of this script)")
    parser.add_argument("--eval-problems", type=int, default=200, help="held-out problems to score after training")
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from os_cli.toy import build_tokenizer

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    started = time.time()

    train = training_problems()
    heldout = heldout_problems(train)
    tokenizer = build_tokenizer([tokenizer_corpus_line(p) for p in train[:5000]], vocab_size=VOCAB_SIZE)
    print(f"{len(train)} training problems, vocab {len(tokenizer)}", flush=True)

    trained = {}
    for spec, steps in ((TEACHER, args.teacher_steps), (THETA, args.theta_steps)):
        spec = dataclasses.replace(spec, steps=steps)
        examples = encode_examples(tokenizer, train, spec.narrated_share, seed=spec.init_seed, hint_share=spec.hint_share)
        lengths = sorted(len(ids) for ids, _ in examples)
        print(f"{spec.name}: tokens per example median {lengths[len(lengths) // 2]}, max {lengths[-1]}", flush=True)
        loaded = args.teacher_main_from if spec.name == TEACHER.name else args.theta_from
        if loaded is not None:
            from transformers import AutoModelForCausalLM

            print(f"  {spec.name}: main schedule skipped, loaded from {loaded}", flush=True)
            model = AutoModelForCausalLM.from_pretrained(loaded, dtype=torch.float32)
        else:
            model = train_model(spec, tokenizer, examples)
        if spec.hint_phase_steps and not (spec.name == THETA.name and args.theta_from is not None):
            if loaded is None:  # a loaded main-schedule model was scored when it was made
                report(spec.name + " after the main schedule", model, tokenizer, heldout[: args.eval_problems])
            model = hint_phase(spec, model, tokenizer, train)
        trained[spec.name] = model
        report(spec.name, model, tokenizer, heldout[: args.eval_problems])

    # Written only once both are trained, so the shipped pair is never half old, half new.
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in trained.items():
        shutil.rmtree(args.out / name, ignore_errors=True)
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
    with open(args.out / "demo-problems.jsonl", "w") as f:
        for p in heldout:
            f.write(json.dumps(p) + "\n")
    total = sum(directory_size(args.out / name) for name in (TEACHER.name, THETA.name))
    total += (args.out / "demo-problems.jsonl").stat().st_size
    print(f"wrote {args.out} ({total / 1e6:.1f} MB) in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
