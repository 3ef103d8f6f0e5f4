"""The Python API of the usage guide: `OptimalSamplingModel(...).generate(...) -> SamplingOutput`, and
`generate_stream` (rows in lazily, each result out as its row ends) on the same batching loop."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Sequence

import torch

from . import engine, models, rng, scheduler
from .alpha import ALPHA_METHODS
from .rows import RowOutput, SamplingOutput, StreamRow, assemble, rows_of_trace, stops
from .sampler import SamplerConfig, mixture_step
from .scheduler import InFlightLimit, SchedulerStats

__all__ = ["OptimalSamplingModel", "SamplingOutput", "StreamRow", "RowOutput", "InFlightLimit", "SchedulerStats"]

log = logging.getLogger("os_cli")

# from_pretrained keyword arguments that concern the tokenizer too.
_TOKENIZER_KWARGS = ("revision", "trust_remote_code", "cache_dir", "token", "local_files_only", "subfolder")
_SAMPLE_FROM = ("mixture", "teacher", "theta")
_LOOPS = ("refill", "static")


class OptimalSamplingModel:
    """Two causal LMs sharing a tokenizer, sampled token by token from q* ∝ pi_theta^(1-a) · pi_t^a.

    `model_t_path=None` (or the same path as theta) loads one model and runs one forward per step.
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
        self.tokenizer = models.load_tokenizer(self.model_theta_path, **tokenizer_kwargs)
        self.tokenizer_t = self.tokenizer if self.same_model else models.load_tokenizer(self.model_t_path, **tokenizer_kwargs)
        if not self.same_model:
            models.check_same_vocabulary(self.tokenizer, self.tokenizer_t, self.model_theta_path, self.model_t_path)
        # Distributions live on the tokenizer's ids; model embeddings may have padding rows beyond them.
        self.vocab_size = len(self.tokenizer)

        load = dict(device=self.device, dtype=self.dtype, attn_implementation=self.attn_implementation, **kwargs)
        self.model_theta = models.load_causal_lm(self.model_theta_path, **load)
        self.model_t = self.model_theta if self.same_model else models.load_causal_lm(self.model_t_path, **load)
        for path, model in ((self.model_theta_path, self.model_theta), (self.model_t_path, self.model_t)):
            rows = model.get_output_embeddings().weight.shape[0]
            if rows < self.vocab_size:
                raise ValueError(f"{path} has {rows} output rows but its tokenizer has {self.vocab_size} tokens")
        self.eos_token_ids = self._eos_ids()
        self.special_token_ids = sorted(set(self.tokenizer.all_special_ids) | set(self.tokenizer_t.all_special_ids))

    # ------------------------------------------------------------------ public

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        prompts_t: Sequence[str] | None = None,
        max_new_tokens: int | Sequence[int] = 100,
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
        draft_tokens: int = 0,
        loop: str = "refill",
    ) -> SamplingOutput:
        """Sample one completion per prompt. `prompts_t` gives the teacher its own prompts.

        `seed` (an int, or one int per prompt) fixes every draw: a row's tokens depend only on its
        seed, prompts and the models, not on its batch-mates or `batch_size`. `stop` strings end a
        row (finish reason "stop"; the text is cut before the stop string). `sample_from="teacher"`
        or `"theta"` skips mixing and samples one model while both still run (baselines, floors).
        `max_new_tokens` may be one cap per prompt. `batch_size` rows decode at once; a finished
        row's slot is refilled with the next prompt at once (continuous batching). `draft_tokens=k`
        samples by exact speculative rounds: theta drafts k tokens, q* verifies them (same
        distribution, fewer teacher forwards). `loop="static"` runs the reference loop instead
        (fixed micro-batches, one token per step), kept for tests and benchmarks.
        """
        prompts, prompts_t = self._check_prompts(prompts, prompts_t)
        caps = self._check_caps(max_new_tokens, len(prompts))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if loop not in _LOOPS:
            raise ValueError(f"loop must be one of {', '.join(_LOOPS)}, got {loop!r}")
        seeds = self._row_seeds(seed, len(prompts)).tolist()
        limit = batch_size or len(prompts)
        if loop == "static":
            if draft_tokens:
                raise ValueError("draft_tokens needs loop='refill'; the static reference loop draws one token per step")
            results = self._static(prompts, prompts_t, seeds, caps, limit, temperature, top_k, top_p, stop,
                                   sample_from, return_logits, return_q_star_probs)
        else:
            rows = [StreamRow(p, pt, seed=s, max_new_tokens=c) for p, pt, s, c in zip(prompts, prompts_t, seeds, caps)]
            results = [None] * len(rows)
            for result, _ in self._decode(rows, max(caps), temperature, top_k, top_p, stop, sample_from, draft_tokens,
                                       limit, return_logits, return_q_star_probs, oom_backoff=False, stats=None):
                results[result.index] = result
        return assemble(results, self.tokenizer.pad_token_id, self.vocab_size,
                        lambda ids, reason: self._text(ids, reason, stops(stop)), return_diagnostics, skip_decode)

    @torch.inference_mode()
    def generate_stream(
        self,
        rows: Iterable[StreamRow],
        *,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = -1,
        stop: Sequence[str] | None = None,
        sample_from: str = "mixture",
        draft_tokens: int = 0,
        limit: int | InFlightLimit = 8,
        return_logits: bool = False,
        return_q_star_probs: bool = False,
        skip_decode: bool = False,
        oom_backoff: bool = False,
        stats: SchedulerStats | None = None,
    ) -> Iterator[RowOutput]:
        """Decode `rows` (read lazily) with up to `limit` in flight; yield each row as soon as it ends.

        Results come in finishing order; `RowOutput.index` is the row's position in `rows` and
        `RowOutput.id` its `StreamRow.id`. A row's output is the one `generate` gives for the same
        prompts and seed. Pass an `InFlightLimit` to lower the limit while iterating; with
        `oom_backoff=True` an out-of-memory error halves it (see `limit.backoffs`) instead of failing,
        and only the rows beyond the new limit restart (with the same output). `stats` collects
        occupancy and acceptance counters.
        """
        rows = iter(rows)
        cap = self._check_caps(max_new_tokens, 1)[0]
        for result, row in self._decode(rows, cap, temperature, top_k, top_p, stop, sample_from, draft_tokens, limit,
                                        return_logits, return_q_star_probs, oom_backoff=oom_backoff, stats=stats):
            text = None if skip_decode else self._text(result.tokens.tolist(), result.finish_reason, stops(stop))
            yield RowOutput(index=result.index, id=row.id, text=text, token_ids=result.tokens,
                            finish_reason=result.finish_reason, traces=result.traces, logits=result.logits,
                            q_star_probs=result.q_star)

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

    def _row_seeds(self, seed, count: int) -> torch.Tensor:
        if seed is None:  # follow torch's global RNG, so torch.manual_seed still reproduces a run
            base = int(torch.randint(0, 2**62, (1,)))
            return base + torch.arange(count, dtype=torch.int64)
        if isinstance(seed, int):
            return seed * 1_000_003 + torch.arange(count, dtype=torch.int64)
        seeds = list(seed)
        if len(seeds) != count or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seed must be an int or a list of {count} ints (one per prompt)")
        return torch.tensor(seeds, dtype=torch.int64)

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
        side = "prompts_t" if teacher else "prompts"
        rows = [self._token_ids(text, side, i, teacher=teacher) for i, text in enumerate(texts)]
        pad = (self.tokenizer_t if teacher else self.tokenizer).pad_token_id
        return engine.left_pad(rows, pad, self.device)

    def _token_ids(self, text: str, side: str, index: int, teacher: bool = False) -> list[int]:
        tokenizer = self.tokenizer_t if teacher else self.tokenizer
        bos = tokenizer.bos_token
        ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
        if not ids:
            raise ValueError(f"{side}[{index}] tokenizes to no tokens: {text!r}")
        return ids

    def _check_caps(self, max_new_tokens, count: int) -> list[int]:
        caps = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(caps) != count or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in caps):
            raise ValueError(
                f"max_new_tokens must be a positive integer or a list of {count} positive integers, got {max_new_tokens!r}"
            )
        return caps

    def _step_fn(self, config: SamplerConfig, sample_from: str):
        """q* for [n, V] logits of rows at per-row steps, exactly as every loop draws it."""
        special = None
        if self.force_target_for_special_tokens and self.special_token_ids:
            special = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            special[self.special_token_ids] = True
        force_first = self.force_target_for_first_token

        def step_fn(logits_theta, logits_t, keys, steps):
            return mixture_step(
                logits_theta, logits_t, config, row_keys=keys, step=steps, force_teacher_tokens=special,
                force_teacher_rows=(steps == 0) if force_first else None, sample_from=sample_from,
            )

        return step_fn

    def _settings(self, temperature, top_k, top_p, stop, sample_from, draft_tokens):
        if sample_from not in _SAMPLE_FROM:
            raise ValueError(f"sample_from must be one of {', '.join(_SAMPLE_FROM)}, got {sample_from!r}")
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 0:
            raise ValueError(f"draft_tokens must be an integer >= 0 (0 = off), got {draft_tokens!r}")
        if draft_tokens and self.same_model:
            raise ValueError("draft_tokens needs two different models: with one model q* is pi_theta, nothing to draft")
        config = self._sampler_config(temperature, top_k, top_p)
        return config, stops(stop)

    def _decode(self, rows, max_new_tokens, temperature, top_k, top_p, stop, sample_from, draft_tokens, limit,
                keep_logits, keep_q_star, oom_backoff, stats) -> Iterator[tuple[scheduler.RowResult, StreamRow]]:
        """The one batching loop (os_cli/scheduler.py) on `StreamRow`s: (result, its row) as rows end."""
        config, stop = self._settings(temperature, top_k, top_p, stop, sample_from, draft_tokens)
        two_streams = not self.same_model
        in_flight: dict[int, StreamRow] = {}

        def requests():
            for index, row in enumerate(rows):
                if not isinstance(row, StreamRow):
                    raise ValueError(f"row {index}: expected a StreamRow, got {type(row).__name__}")
                prompt_t = row.prompt if row.prompt_t is None else row.prompt_t
                for name, text in (("prompts", row.prompt), ("prompts_t", prompt_t)):
                    if not isinstance(text, str) or not text:
                        raise ValueError(f"{name}[{index}] must be a non-empty string, got {text!r}")
                if isinstance(row.seed, bool) or not isinstance(row.seed, int):
                    raise ValueError(f"row {index}: seed must be an int, got {row.seed!r}")
                request = scheduler.RowRequest(
                    index, self._token_ids(row.prompt, "prompts", index),
                    self._token_ids(prompt_t, "prompts_t", index, teacher=True) if two_streams else None,
                    int(rng.row_keys(torch.tensor([row.seed]))[0]), row.max_new_tokens,
                )
                in_flight[index] = row
                yield request

        for result in scheduler.decode_rows(
            requests(), self.model_theta, self.model_t if two_streams else None, self.vocab_size,
            self._step_fn(config, sample_from), limit=limit, max_new_tokens=max_new_tokens,
            eos_ids=self.eos_token_ids, pad_id=self.tokenizer.pad_token_id,
            stop_fn=self._stop_fn(stop) if stop else None, keep_logits=keep_logits, keep_q_star=keep_q_star,
            draft_tokens=draft_tokens, temperature=config.temperature, oom_backoff=oom_backoff, stats=stats,
        ):
            yield result, in_flight.pop(result.index)

    def _static(self, prompts, prompts_t, seeds, caps, chunk, temperature, top_k, top_p, stop, sample_from,
                keep_logits, keep_q_star) -> list[scheduler.RowResult]:
        """The reference loop (engine.decode): fixed micro-batches, each until its last row ends."""
        if len(set(caps)) != 1:
            raise ValueError("per-row max_new_tokens needs loop='refill'")
        config, stop = self._settings(temperature, top_k, top_p, stop, sample_from, 0)
        keys = rng.row_keys(torch.tensor(seeds, dtype=torch.int64)).to(self.device)
        step_fn = self._step_fn(config, sample_from)
        stop_fn = self._stop_fn(stop) if stop else None
        results = []
        for start in range(0, len(prompts), chunk):
            part_keys = keys[start:start + chunk]
            theta = engine.ModelStream(self.model_theta, self.vocab_size)
            teacher = None if self.same_model else engine.ModelStream(self.model_t, self.vocab_size)
            trace = engine.decode(
                theta, teacher, self.encode(prompts[start:start + chunk]),
                None if self.same_model else self.encode(prompts_t[start:start + chunk], teacher=True),
                lambda lt, lt_t, rows, step: step_fn(lt, lt_t, part_keys[rows], torch.full_like(rows, step)),
                max_new_tokens=caps[0], eos_ids=self.eos_token_ids, pad_id=self.tokenizer.pad_token_id,
                stop_fn=stop_fn, keep_logits=keep_logits, keep_q_star=keep_q_star,
            )
            results += rows_of_trace(trace, start, self.vocab_size)
        return results

    def _stop_fn(self, stop: list[str]):
        window = max(len(s) for s in stop) + 2  # a token is at least one character
        decode = self.tokenizer.decode

        def stop_fn(row, ids: list[int]) -> bool:
            tail = decode(ids[-window:], skip_special_tokens=True)
            return any(s in tail for s in stop)

        return stop_fn

    def _text(self, ids: list[int], reason: str, stop: list[str]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if reason == "stop":
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
            text = text[:cut]
        return text
