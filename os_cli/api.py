"""The Python API of the usage guide: `OptimalSamplingModel(...).generate(...) -> SamplingOutput`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from . import engine, models, preflight, rng, samples
from .alpha import ALPHA_METHODS
from .limits import MAX_NEW_TOKENS, MAX_SEED
from .sampler import SamplerConfig, mixture_step

log = logging.getLogger("os_cli")

# from_pretrained keyword arguments that concern the tokenizer too.
_TOKENIZER_KWARGS = ("revision", "trust_remote_code", "cache_dir", "token", "local_files_only", "subfolder")
_SAMPLE_FROM = ("mixture", "teacher", "theta")


@dataclass
class SamplingOutput:
    """Results in input order. Float tensors hold NaN, and `generated_ids` the pad id, after a row ended.

    Averages over real tokens: `x[out.mask].mean()` or `x.nanmean()`.
    """

    generated_texts: list[str] | None
    generated_ids: torch.Tensor  # [batch, len]
    alpha_values: torch.Tensor  # [batch, len]
    ess_ratios: torch.Tensor  # [batch, len]
    diagnostics: dict[str, torch.Tensor] | None  # alpha, ess_theta, ess_t, ess_ratio, kl_theta, kl_t, fallback
    lengths: torch.Tensor  # [batch] tokens generated per row, EOS included
    finish_reasons: list[str]  # "eos" | "length" | "stop"
    mask: torch.Tensor  # [batch, len] bool, True on real positions
    logprobs: dict[str, torch.Tensor]  # "theta", "t", "q": log-prob of each sampled token, [batch, len]
    logits: dict[str, torch.Tensor] | None = None  # "theta", "t": raw logits before temperature, [batch, len, vocab]
    q_star_probs: torch.Tensor | None = None  # [batch, len, vocab], the distribution each token was drawn from
    # With generate(num_samples=n): row r is sample sample_indices[r] of prompt prompt_indices[r] (os_cli/samples.py)
    prompt_indices: torch.Tensor | None = None  # [batch] int64
    sample_indices: torch.Tensor | None = None  # [batch] int64


class OptimalSamplingModel:
    """Two causal LMs sharing a tokenizer, sampled token by token from q* ∝ pi_theta^(1-a) · pi_t^a.

    `model_t_path=None` (or the same path as theta) loads the weights once. With identical prompts that
    model runs one forward per step; with distinct teacher prompts (`prompts_t`, e.g. a hint only the
    teacher sees) it keeps two streams over the same weights, each with its own KV cache.
    Keyword arguments go to `from_pretrained`; `load_in_4bit` / `load_in_8bit` / `bnb_*` become a
    BitsAndBytesConfig. The alpha settings are plain attributes and may be changed between calls.
    """

    def __init__(
        self,
        model_theta_path: str,
        model_t_path: str | None = None,
        alpha_method: str = "kl_symmetry",
        fixed_alpha: float = 0.5,
        alpha_min: float = 0.5,
        alpha_max: float = 1.0,
        constraint_to_target: bool = False,
        target_top_k: int = -1,
        target_top_p: float = 1.0,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = "auto",
        force_target_for_first_token: bool = False,
        force_target_for_special_tokens: bool = False,
        **kwargs,
    ):
        if not model_theta_path:
            raise ValueError("model_theta_path is required: a local folder, a hub name or builtin:NAME")
        self.alpha_method = alpha_method
        self.fixed_alpha = fixed_alpha
        self.alpha_min = alpha_min
        self.alpha_max = alpha_max
        self.constraint_to_target = constraint_to_target
        self.target_top_k = target_top_k
        self.target_top_p = target_top_p
        self.force_target_for_first_token = force_target_for_first_token
        self.force_target_for_special_tokens = force_target_for_special_tokens
        self._sampler_config(1.0, -1, 1.0)  # fail fast on bad alpha/constraint settings

        self.device = models.resolve_device(device)
        self.dtype = models.resolve_dtype(dtype, self.device)
        self.attn_implementation = models.choose_attn_implementation(kwargs.pop("attn_implementation", None), self.device)
        log.info("device %s, dtype %s, attention %s", self.device, str(self.dtype).replace("torch.", ""),
                 self.attn_implementation)

        self.model_theta_path = models.resolve_model_path(model_theta_path)
        self.model_t_path = models.resolve_model_path(model_t_path) if model_t_path else self.model_theta_path
        self.same_model = self.model_t_path == self.model_theta_path
        tokenizer_kwargs = {k: kwargs[k] for k in _TOKENIZER_KWARGS if k in kwargs}
        theta_role = "theta (also the teacher)" if self.same_model else "theta"
        self.tokenizer = models.load_tokenizer(self.model_theta_path, role=theta_role, **tokenizer_kwargs)
        self.tokenizer_t = self.tokenizer if self.same_model else models.load_tokenizer(
            self.model_t_path, role="teacher", **tokenizer_kwargs)
        if not self.same_model:
            models.check_same_vocabulary(self.tokenizer, self.tokenizer_t, self.model_theta_path, self.model_t_path)
        # Distributions live on the tokenizer's ids; model embeddings may have padding rows beyond them.
        self.vocab_size = len(self.tokenizer)

        load = dict(device=self.device, dtype=self.dtype, attn_implementation=self.attn_implementation, **kwargs)
        self.model_theta = models.load_causal_lm(self.model_theta_path, role=theta_role, **load)
        self.model_t = self.model_theta if self.same_model else models.load_causal_lm(
            self.model_t_path, role="teacher", **load)
        for path, model in ((self.model_theta_path, self.model_theta), (self.model_t_path, self.model_t)):
            rows = model.get_output_embeddings().weight.shape[0]
            if rows < self.vocab_size:
                raise ValueError(f"{path} has {rows} output rows but its tokenizer has {self.vocab_size} tokens")
        self.eos_token_ids = self._eos_ids()
        # Longest prompt + new tokens each model takes (None: not known); `generate` checks it.
        self.context_theta = preflight.context_length(self.model_theta.config, self.tokenizer)
        self.context_t = preflight.context_length(self.model_t.config, self.tokenizer_t)
        self.special_token_ids = sorted(set(self.tokenizer.all_special_ids) | set(self.tokenizer_t.all_special_ids))

    # ------------------------------------------------------------------ public

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        prompts_t: Sequence[str] | None = None,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        return_diagnostics: bool = True,
        skip_decode: bool = False,
        return_logits: bool = False,
        return_q_star_probs: bool = False,
        batch_size: int | None = None,
        seed: int | Sequence[int] | None = None,
        stop: Sequence[str] | None = None,
        sample_from: str = "mixture",
        num_samples: int | None = None,
    ) -> SamplingOutput:
        """Sample one completion per prompt. `prompts_t` gives the teacher its own prompts.

        `seed` (an int, or one int per prompt) fixes every draw: a row's tokens depend only on its
        seed, prompts and the models, not on its batch-mates or `batch_size`. `stop` strings end a
        row (finish reason "stop"; the text is cut before the stop string). `sample_from="teacher"`
        or `"theta"` skips mixing and samples one model while both still run (baselines, floors).
        `num_samples=n` samples n completions per prompt: rows prompt-major (prompt 0's n samples
        first), sample 0 of each prompt is what a call without num_samples draws (os_cli/samples.py).
        """
        if num_samples is not None:  # a thin layer over this same method: repeat, seed, annotate
            args = {k: v for k, v in locals().items() if k not in ("self", "num_samples", "__class__")}
            return samples.generate_samples(self, num_samples, args)
        prompts, prompts_t = self._check_prompts(prompts, prompts_t)
        if not _is_int(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
        max_new_tokens = int(max_new_tokens)
        self._check_lengths(prompts, prompts_t, max_new_tokens)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if sample_from not in _SAMPLE_FROM:
            raise ValueError(f"sample_from must be one of {', '.join(_SAMPLE_FROM)}, got {sample_from!r}")
        config = self._sampler_config(temperature, top_k, top_p)
        stop = [s for s in (stop or []) if s]
        keys = rng.row_keys(self._row_seeds(seed, len(prompts)))

        chunk = batch_size or len(prompts)
        parts = []
        for start in range(0, len(prompts), chunk):
            rows = slice(start, start + chunk)
            parts.append(self._decode_batch(
                prompts[rows], prompts_t[rows], keys[rows], config, max_new_tokens, stop, sample_from,
                return_logits, return_q_star_probs,
            ))
        return self._assemble(parts, max_new_tokens, stop, return_diagnostics, skip_decode)

    # ------------------------------------------------------------------ internals

    def _sampler_config(self, temperature: float, top_k: int, top_p: float) -> SamplerConfig:
        if self.alpha_method not in ALPHA_METHODS:
            raise ValueError(f"alpha_method {self.alpha_method!r} is unknown; choose one of {', '.join(ALPHA_METHODS)}")
        config = SamplerConfig(
            alpha_method=self.alpha_method, fixed_alpha=self.fixed_alpha, alpha_min=self.alpha_min,
            alpha_max=self.alpha_max, temperature=temperature, top_k=top_k, top_p=top_p,
            constraint_to_target=self.constraint_to_target, target_top_k=self.target_top_k,
            target_top_p=self.target_top_p,
        )
        config.validate()
        return config

    def _check_prompts(self, prompts, prompts_t) -> tuple[list[str], list[str]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts_t, str):
            prompts_t = [prompts_t]
        prompts = list(prompts or [])
        if not prompts:
            raise ValueError("prompts is empty: pass a list of at least one prompt string")
        prompts_t = prompts if prompts_t is None else list(prompts_t)
        if len(prompts_t) != len(prompts):
            raise ValueError(f"prompts_t has {len(prompts_t)} prompts but prompts has {len(prompts)}; they pair up row by row")
        for name, batch in (("prompts", prompts), ("prompts_t", prompts_t)):
            for i, text in enumerate(batch):
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{name}[{i}] must be a non-empty string, got {text!r}")
        return prompts, prompts_t

    def _check_lengths(self, prompts, prompts_t, max_new_tokens: int) -> None:
        """Every prompt must tokenize to at least one token and fit its model's context with the new tokens."""
        sides = [("prompts", prompts, self.tokenizer, self.context_theta, self.model_theta_path)]
        if prompts_t is not prompts or self.tokenizer_t is not self.tokenizer or self.context_t != self.context_theta:
            sides.append(("prompts_t", prompts_t, self.tokenizer_t, self.context_t, self.model_t_path))
        for name, texts, tokenizer, context, path in sides:
            for i, ids in enumerate(preflight.prompt_token_ids(tokenizer, texts)):
                problem = preflight.length_problem(len(ids), max_new_tokens, context)
                if problem is not None:
                    raise ValueError(f"{name}[{i}]: {problem} ({path}); shorten the prompt or max_new_tokens")

    def _row_seeds(self, seed, count: int) -> torch.Tensor:
        if seed is None:  # follow torch's global RNG, so torch.manual_seed still reproduces a run
            base = int(torch.randint(0, 2**62, (1,)))
            return base + torch.arange(count, dtype=torch.int64)
        if getattr(seed, "ndim", None) == 0 and hasattr(seed, "item"):  # a 0-d numpy array or tensor
            seed = seed.item()
        if _is_int(seed):
            base = _checked_seed(seed, "seed")
            return torch.tensor([rng.row_seed(base, i) for i in range(count)], dtype=torch.int64)
        if isinstance(seed, (str, bytes, float)) or not hasattr(seed, "__iter__"):
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED} (or a list of {count}, one per prompt), "
                             f"got {type(seed).__name__} {seed!r}")
        seeds = list(seed)
        if len(seeds) != count:
            raise ValueError(f"seed must be an int or a list of {count} ints (one per prompt), got {len(seeds)}")
        return torch.tensor([_checked_seed(s, f"seed[{i}]") for i, s in enumerate(seeds)], dtype=torch.int64)

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for model, tokenizer in ((self.model_theta, self.tokenizer), (self.model_t, self.tokenizer_t)):
            configured = getattr(model.generation_config, "eos_token_id", None)
            ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
            ids.add(tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None and i < self.vocab_size)

    def encode(self, texts: Sequence[str], teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask on the model's device, as `generate` feeds them.

        Texts that already start with BOS (chat templates) get no second one.
        """
        tokenizer, side = (self.tokenizer_t, "prompts_t") if teacher else (self.tokenizer, "prompts")
        encoded = preflight.prompt_token_ids(tokenizer, texts)
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"{side}[{i}] tokenizes to no tokens: {texts[i]!r}")
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, row in enumerate(encoded):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _decode_batch(self, prompts, prompts_t, keys, config, max_new_tokens, stop, sample_from,
                      keep_logits, keep_q_star) -> engine.DecodeTrace:
        keys = keys.to(self.device)
        special = None
        if self.force_target_for_special_tokens and self.special_token_ids:
            special = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            special[self.special_token_ids] = True
        force_first = self.force_target_for_first_token

        def step_fn(logits_theta, logits_t, rows, step):
            first = torch.ones_like(rows, dtype=torch.bool) if (force_first and step == 0) else None
            return mixture_step(
                logits_theta, logits_t, config, row_keys=keys[rows], step=step,
                force_teacher_tokens=special, force_teacher_rows=first, sample_from=sample_from,
            )

        stop_fn = self._stop_fn(stop) if stop else None
        # One model and identical prompts: pi_t = pi_theta at every step, so one stream serves both.
        # One model with its own teacher prompts (a hint) still needs a second stream and cache.
        one_stream = self.same_model and list(prompts_t) == list(prompts)
        theta = engine.ModelStream(self.model_theta, self.vocab_size)
        teacher = None if one_stream else engine.ModelStream(self.model_t, self.vocab_size)
        return engine.decode(
            theta, teacher, self.encode(prompts),
            None if one_stream else self.encode(prompts_t, teacher=True),
            step_fn, max_new_tokens=max_new_tokens, eos_ids=self.eos_token_ids,
            pad_id=self.tokenizer.pad_token_id, stop_fn=stop_fn, keep_logits=keep_logits, keep_q_star=keep_q_star,
        )

    def _stop_fn(self, stop: list[str]):
        window = max(len(s) for s in stop) + 2  # a token is at least one character
        decode = self.tokenizer.decode

        def stop_fn(row: int, ids: list[int]) -> bool:
            tail = decode(ids[-window:], skip_special_tokens=True)
            return any(s in tail for s in stop)

        return stop_fn

    def _assemble(self, parts: list[engine.DecodeTrace], max_new_tokens, stop, return_diagnostics, skip_decode):
        lengths = torch.cat([p.lengths for p in parts]).cpu()
        width = int(lengths.max())
        cat = lambda tensors: torch.cat([t[:, :width] for t in tensors]).cpu()  # noqa: E731
        ids = cat([p.tokens for p in parts])
        traces = {name: cat([p.traces[name] for p in parts]) for name in engine.TRACE_FIELDS}
        reasons = [r for p in parts for r in p.finish_reasons]
        mask = torch.arange(width)[None, :] < lengths[:, None]

        texts = None
        if not skip_decode:
            texts = [self._text(ids[i, : lengths[i]].tolist(), reasons[i], stop) for i in range(len(reasons))]
        diagnostics = None
        if return_diagnostics:
            diagnostics = {name: traces[name] for name in
                           ("alpha", "ess_theta", "ess_t", "ess_ratio", "kl_theta", "kl_t", "fallback")}
        logits = None
        if parts[0].logits:
            logits = {side: self._stack_steps(parts, lambda p: p.logits[side], width) for side in ("theta", "t")}
        q_star = self._stack_steps(parts, lambda p: p.q_star, width) if parts[0].q_star else None
        return SamplingOutput(
            generated_texts=texts, generated_ids=ids, alpha_values=traces["alpha"], ess_ratios=traces["ess_ratio"],
            diagnostics=diagnostics, lengths=lengths, finish_reasons=reasons, mask=mask,
            logprobs={"theta": traces["logprob_theta"], "t": traces["logprob_t"], "q": traces["logprob_q"]},
            logits=logits, q_star_probs=q_star,
        )

    def _text(self, ids: list[int], reason: str, stop: list[str]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if reason == "stop":
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
            text = text[:cut]
        return text

    def _stack_steps(self, parts, steps_of, width: int) -> torch.Tensor:
        """[batch, width, vocab] from per-step (rows, values) pairs, NaN where a row had ended."""
        total = sum(p.tokens.shape[0] for p in parts)
        out = torch.full((total, width, self.vocab_size), float("nan"))
        offset = 0
        for part in parts:
            for step, (rows, values) in enumerate(steps_of(part)):
                out[offset + rows.cpu(), step] = values.float().cpu()
            offset += part.tokens.shape[0]
        return out


def _is_int(value) -> bool:
    """Python and numpy integers (not bool)."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_seed(value, name: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED}, got {value}")
    return value
