"""Helpers of benchmarks/train_on_samples.py: training prompts, sampling, fine-tuning, evaluation.

Everything here runs on the built-in demo pair (os_cli/builtin/, made by scripts/train_demo.py) and
is a pure function of its arguments and seeds: same inputs, same outputs on the same machine.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from os_cli import OptimalSamplingModel
from os_cli.models.loading import resolve_model_path
from os_cli.report.answers import completion_matches
from os_cli.report.tis import TIS_CLIP, truncated_token_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBLEMS_FILE = REPO_ROOT / "os_cli" / "builtin" / "demo-problems.jsonl"
THETA = "builtin:demo-theta"
TEACHER = "builtin:demo-teacher"
MAX_NEW_TOKENS = 64  # demo solutions take 21-57 tokens (os_cli/builtin/README.md)

# The samplers compared: OptimalSamplingModel keyword arguments, and whether the teacher's prompt
# holds the reference answer. Adaptive methods use the API's default bounds, alpha in [0.5, 1].
SAMPLERS = {
    "theta alone": dict(alpha_method="fixed", fixed_alpha=0.0, alpha_min=0.0, alpha_max=0.0),
    "teacher alone": dict(alpha_method="fixed", fixed_alpha=1.0, alpha_min=1.0, alpha_max=1.0),
    "q* fixed 0.5": dict(alpha_method="fixed", fixed_alpha=0.5, alpha_min=0.5, alpha_max=0.5),
    "q* kl_symmetry": dict(alpha_method="kl_symmetry"),
    "q* ess_balance": dict(alpha_method="ess_balance"),
    "q* entropy": dict(alpha_method="entropy"),
    "q* hinted teacher": dict(alpha_method="kl_symmetry"),
    "q* hinted teacher (entropy)": dict(alpha_method="entropy"),
    "q* self-teacher (one model)": dict(alpha_method="kl_symmetry"),
}
HINTED = {"q* hinted teacher", "q* hinted teacher (entropy)", "q* self-teacher (one model)"}
# One model: the teacher is theta itself (builtin:demo-theta loaded once), shown the hinted prompt.
SELF_TEACHER = {"q* self-teacher (one model)"}
ON_POLICY = {"theta alone"}  # log pi_theta - log q* is 0 on every token: no importance weighting

# The fine-tuning losses compared (fine_tune): plain SFT, sequence-level importance weights
# (importance_weights) and token-level truncated importance weights (tis_weights).
WEIGHTINGS = ("sft", "is", "tis")
# TIS truncation c: TIS_CLIP (2.0) and its reasons in os_cli/report/tis.py, which export uses too.


def _train_demo():
    """scripts/train_demo.py as a module (scripts/ is no package); importing it trains nothing."""
    name = "_train_on_samples_train_demo"  # own name: never clashes with tests' own import of the script
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


train_demo = _train_demo()


def heldout_problems(limit: int | None = None) -> list[dict]:
    with open(PROBLEMS_FILE) as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit] if limit else rows


def training_prompts(n: int, seed: int, heldout: list[dict]) -> list[dict]:
    """`n` problems from scripts/train_demo.py's generator with `seed`, none of whose questions is
    among the held-out ones (over-drawn, collisions dropped, then checked)."""
    if seed == train_demo.HELDOUT_SEED:
        raise ValueError(f"seed {seed} is the held-out problems' seed; pick another")
    taken = {p["question"] for p in heldout}
    candidates = train_demo.make_problems(n + n // 4 + 50, seed)
    fresh = [p for p in candidates if p["question"] not in taken][:n]
    if len(fresh) < n:
        raise RuntimeError(f"only {len(fresh)} of {n} training problems are disjoint from the held-out set")
    assert not taken & {p["question"] for p in fresh}, "training prompts overlap the held-out problems"
    return fresh


def hint_question(problem: dict) -> str:
    """The teacher's side of the hinted samplers: the reference answer, then the question, in the
    form the demo pair was trained to read (scripts/train_demo.py's HINT_TEMPLATE)."""
    return train_demo.hint_question(problem)


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


@dataclass
class Sample:
    """One training example: theta's prompt ids, the sampled completion ids (EOS included when the
    row stopped with it), sums over its tokens of log pi_theta and log q*, and the same per token
    (as the records' `tokens.logprob_theta` / `tokens.logprob_q` hold them)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logp_theta: float
    logp_q: float
    correct: bool
    terse: bool
    token_logp_theta: list[float] | None = None
    token_logp_q: list[float] | None = None


def sample_dataset(name: str, problems: list[dict], seed: int, batch_size: int) -> list[Sample]:
    """One completion per problem from sampler `name` (a key of SAMPLERS), row seeds `seed + i`."""
    teacher = THETA if name in SELF_TEACHER else TEACHER
    model = OptimalSamplingModel(THETA, teacher, dtype=torch.float32, device="cpu", **SAMPLERS[name])
    tok = model.tokenizer
    prompts = [chat(tok, p["question"]) for p in problems]
    prompts_t = [chat(tok, hint_question(p)) for p in problems] if name in HINTED else None
    out = model.generate(prompts, prompts_t=prompts_t, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                         seed=[seed + i for i in range(len(problems))], batch_size=batch_size)
    samples = []
    for i, p in enumerate(problems):
        n = int(out.lengths[i])
        text = out.generated_texts[i]
        theta_i, q_i = out.logprobs["theta"][i, :n].double(), out.logprobs["q"][i, :n].double()
        samples.append(Sample(
            prompt_ids=tok(prompts[i], add_special_tokens=False).input_ids,
            completion_ids=out.generated_ids[i, :n].tolist(),
            logp_theta=float(theta_i.sum()),
            logp_q=float(q_i.sum()),
            correct=bool(completion_matches(text, p["answer"])),
            terse=text.lstrip()[:1].isdigit(),
            token_logp_theta=theta_i.tolist(),
            token_logp_q=q_i.tolist(),
        ))
    return samples


def importance_weights(samples: list[Sample], clip: float) -> torch.Tensor:
    """Per-sequence weights for importance-weighted SFT, mean 1 over the data set.

    log w_i = log pi_theta(y_i) - log q*(y_i) (sums over the completion's tokens, as recorded while
    sampling); self-normalised over the whole data set, w_i = N exp(log w_i) / sum_j exp(log w_j)
    (mean 1); clipped at `clip` (times the mean); renormalised to mean 1 so the loss keeps SFT's scale.
    """
    log_w = torch.tensor([s.logp_theta - s.logp_q for s in samples], dtype=torch.float64)
    w = torch.softmax(log_w, dim=0) * len(samples)
    w = w.clamp(max=clip)
    return (w * len(samples) / w.sum()).float()


def tis_weights(samples: list[Sample], clip: float = TIS_CLIP) -> list[torch.Tensor]:
    """Per-token truncated importance weights (TIS), one tensor per sample over its completion tokens:
    w_it = min(exp(log pi_theta(y_it) - log q*(y_it)), clip), from the per-token log-probabilities
    recorded while sampling. Not self-normalised: the loss keeps SFT's normalisation (fine_tune)."""
    return [
        torch.tensor(truncated_token_weights([a - b for a, b in zip(s.token_logp_theta, s.token_logp_q)], clip))
        for s in samples
    ]


def sequence_mean_weights(token_weights: list[torch.Tensor]) -> torch.Tensor:
    """Each sample's mean token weight (what the diagnostics of a token-level weighting report)."""
    return torch.stack([w.mean() if len(w) else torch.tensor(1.0) for w in token_weights])


def weighted_share(flags: list[bool], weights: torch.Tensor | None) -> float:
    """sum_i w_i flag_i / sum_i w_i (the plain share when `weights` is None)."""
    w = torch.ones(len(flags), dtype=torch.float64) if weights is None else weights.double()
    return float((w * torch.tensor(flags, dtype=torch.float64)).sum() / w.sum())


def effective_sample_size(weights: torch.Tensor) -> float:
    w = weights.double()
    return float(w.sum() ** 2 / (w * w).sum())


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    seed: int
    warmup: float = 0.1  # share of steps with linear warmup; cosine decay to 10% after


def fine_tune(samples: list[Sample], weights: torch.Tensor | None, cfg: TrainConfig, pad_id: int,
              token_weights: list[torch.Tensor] | None = None):
    """A fresh copy of builtin:demo-theta trained on `samples` (loss on completion tokens only).

    The loss of a batch is sum_i w_i * sum_t v_it * nll_it / sum_i T_i, with w_i the sequence weights
    `weights` and v_it the token weights `token_weights` (each 1 when None): with all weights 1
    (plain SFT) it is the mean token NLL, as in scripts/train_demo.py. Batches: the data set
    reshuffled every epoch by `random.Random(cfg.seed)`, so every data set of the same size is
    visited in the same order.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(THETA), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, int(cfg.warmup * cfg.steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    weights = torch.ones(len(samples)) if weights is None else weights
    order_rng, order = random.Random(cfg.seed), []
    losses = []
    for _ in range(cfg.steps):
        while len(order) < cfg.batch_size:
            epoch = list(range(len(samples)))
            order_rng.shuffle(epoch)
            order += epoch
        batch, order = order[: cfg.batch_size], order[cfg.batch_size:]
        input_ids, attention, labels = _collate([samples[i] for i in batch], pad_id)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        targets = labels[:, 1:]
        real = targets != -100
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.clamp(min=0).reshape(-1), reduction="none"
        ).view(targets.shape) * real
        if token_weights is not None:
            nll = nll * _token_weight_grid([token_weights[i] for i in batch], [samples[i] for i in batch], targets.shape)
        loss = (weights[batch] * nll.sum(dim=1)).sum() / real.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return model, losses


def _token_weight_grid(token_weights: list[torch.Tensor], batch: list[Sample], shape) -> torch.Tensor:
    """Token weights laid out like the shifted targets of _collate: row r's completion token t sits
    at column len(prompt_ids) + t - 1; 0 elsewhere (those positions carry no loss anyway)."""
    grid = torch.zeros(shape)
    for row, (w, s) in enumerate(zip(token_weights, batch)):
        start = len(s.prompt_ids) - 1
        grid[row, start: start + len(w)] = w
    return grid


def _collate(batch: list[Sample], pad_id: int):
    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, s in enumerate(batch):
        ids, start = s.prompt_ids + s.completion_ids, len(s.prompt_ids)
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start: len(ids)] = torch.tensor(s.completion_ids)
        attention[row, : len(ids)] = 1
    return input_ids, attention, labels


def evaluate(model, tokenizer, problems: list[dict], samples_per_problem: int, seed: int, batch_size: int) -> dict:
    """Accuracy of `model` (None: builtin:demo-theta as shipped) on `problems`, sampling it alone at
    temperature 1 through the API, `samples_per_problem` completions each; the same row seeds for
    every model, so models are compared on common random numbers.

    Returns accuracy, its standard error over problems, and the share of terse-style completions."""
    with tempfile.TemporaryDirectory(prefix="train_on_samples-") as tmp:
        path = THETA
        if model is not None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            path = tmp
        sampler = OptimalSamplingModel(path, None, dtype=torch.float32, device="cpu", **SAMPLERS["theta alone"])
        k = samples_per_problem
        prompts = [chat(sampler.tokenizer, p["question"]) for p in problems for _ in range(k)]
        out = sampler.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                               seed=[seed + i for i in range(len(prompts))], batch_size=batch_size)
    texts = out.generated_texts
    per_problem = [
        sum(bool(completion_matches(texts[i * k + j], p["answer"])) for j in range(k)) / k
        for i, p in enumerate(problems)
    ]
    n = len(per_problem)
    mean = sum(per_problem) / n
    var = sum((x - mean) ** 2 for x in per_problem) / max(1, n - 1)
    return {
        "accuracy": mean,
        "accuracy_se": math.sqrt(var / n),
        "terse": sum(t.lstrip()[:1].isdigit() for t in texts) / len(texts),
    }
