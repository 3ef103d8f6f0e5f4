"""The Python API of the usage guide: `OptimalSamplingModel(...).generate(...) -> SamplingOutput`, and
`generate_stream` (rows in lazily, each result out as its row ends) on the same batching loop."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from os_cli.api import arguments, call_config, row_stream, samples, static_loop
from os_cli.api.arguments import CallSettings
from os_cli.api.rows import RowOutput, SamplingOutput, StreamRow, assemble
from os_cli.engine import fixed_slots as static_stream
from os_cli.engine import streams as engine
from os_cli.engine.requests import RowResult
from os_cli.engine.scheduler import InFlightLimit, SchedulerStats
from os_cli.engine.stop_strings import cut_at_stop
from os_cli.mix.sampler import SamplerConfig
from os_cli.mix.topk import DEFAULT_OF as TOPK_OF_DEFAULT
from os_cli.mix.topk import topk_spec
from os_cli.models import hub, preflight
from os_cli.models import loading as models
from os_cli.prompts import lengths

__all__ = ["OptimalSamplingModel", "SamplingOutput", "StreamRow", "RowOutput", "InFlightLimit", "SchedulerStats"]

log = logging.getLogger("os_cli")

_LOOPS = ("refill", "static")


class OptimalSamplingModel:
    """Two causal LMs sharing a tokenizer, sampled token by token from q* ∝ pi_theta^(1-a) · pi_t^a.

    `model_t_path=None` (or the same path as theta) loads the weights once. With identical prompts that
    model runs one forward per step; with distinct teacher prompts (`prompts_t`, e.g. a hint only the
    teacher sees) each row keeps two KV caches, stacked in one forward per step (engine/stacked.py).
    Keyword arguments go to `from_pretrained` of both models; `load_in_4bit` / `load_in_8bit` / `bnb_*`
    become a BitsAndBytesConfig, `device_map` (a strategy such as "auto", or {module: device}) with
    `max_memory` places a model instead of `device`. Per model: `device_t` / `dtype_t` (the teacher;
    default: `device` / `dtype`) and `theta_kwargs` / `teacher_kwargs` (from_pretrained arguments for one
    model, over the shared ones), e.g. `teacher_kwargs={"device_map": "auto", "load_in_4bit": True}`.
    Mixing runs on theta's device (`self.device`); the teacher's logits move there each step.
    The alpha settings are plain attributes and may be changed between calls, and so is `compile`
    (True: fixed cache slots and a compiled decode step, "static": the slots only; os_cli/static_stream.py).
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
        device_t: str | torch.device | None = None,
        dtype_t: str | torch.dtype | None = None,
        theta_kwargs: dict | None = None,
        teacher_kwargs: dict | None = None,
        compile: bool | str = False,
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

        # Placement of each model, checked before anything loads: `device`/`dtype`/**kwargs are both
        # models' defaults; `device_t`/`dtype_t` and `theta_kwargs`/`teacher_kwargs` override one model.
        for name, extra in (("theta_kwargs", theta_kwargs), ("teacher_kwargs", teacher_kwargs)):
            if extra is not None and not isinstance(extra, dict):
                raise ValueError(f"{name} must be a dict of from_pretrained keyword arguments, got {extra!r}")
        requested_attn = kwargs.pop("attn_implementation", None)
        static_stream.check_compile(compile, attn_implementation=requested_attn)
        self._slot_pool: dict[tuple[bool, int, bool], static_stream.FixedSlots]  # by fixed_slots()
        self.compile, self._slot_pool = compile, {}  # fixed-slot decoding (os_cli/static_stream.py)
        if compile and requested_attn is None:
            requested_attn = "sdpa"  # the fixed-slot step builds sdpa/eager masks (not flash-attn's)
        spec_theta = models.load_spec("theta", device, dtype, {**kwargs, **(theta_kwargs or {})})
        spec_t = models.load_spec(
            "teacher",
            device if device_t is None else device_t,
            dtype if dtype_t is None else dtype_t,
            {**kwargs, **(teacher_kwargs or {})},
        )
        self.attn_implementation = models.choose_attn_implementation(requested_attn, spec_theta.device)
        attn_t = models.choose_attn_implementation(requested_attn, spec_t.device)

        self.model_theta_path = models.resolve_model_path(model_theta_path)
        self.model_t_path = models.resolve_model_path(model_t_path) if model_t_path else self.model_theta_path
        # One set of weights serves both parts when the paths and the ways of loading them agree.
        self.same_model = (
            self.model_t_path == self.model_theta_path
            and spec_theta.same_load(spec_t)
            and attn_t == self.attn_implementation
        )
        tokenizer_kwargs = hub.tokenizer_kwargs(kwargs)
        theta_role = "theta (also the teacher)" if self.same_model else "theta"
        self.tokenizer = models.load_tokenizer(self.model_theta_path, role=theta_role, **tokenizer_kwargs)
        self.tokenizer_t = (
            self.tokenizer
            if self.same_model
            else models.load_tokenizer(self.model_t_path, role="teacher", **tokenizer_kwargs)
        )
        if not self.same_model:
            models.check_same_vocabulary(self.tokenizer, self.tokenizer_t, self.model_theta_path, self.model_t_path)
        # Distributions live on the tokenizer's ids; model embeddings may have padding rows beyond them.
        self.vocab_size = len(self.tokenizer)

        self.model_theta = models.load_causal_lm(
            self.model_theta_path, spec_theta, role=theta_role, attn_implementation=self.attn_implementation
        )
        self.model_t = (
            self.model_theta
            if self.same_model
            else models.load_causal_lm(self.model_t_path, spec_t, role="teacher", attn_implementation=attn_t)
        )
        # Mixing happens on theta's input device; each model takes its prompt ids on its own input device.
        self.device = models.input_device(self.model_theta)
        self.device_t = models.input_device(self.model_t)
        self.dtype, self.dtype_t = spec_theta.dtype, spec_t.dtype
        log.info(
            "theta on %s, teacher on %s, dtype %s / %s, attention %s",
            models.describe_placement(self.model_theta, self.device),
            models.describe_placement(self.model_t, self.device_t),
            str(self.dtype).replace("torch.", ""),
            str(self.dtype_t).replace("torch.", ""),
            self.attn_implementation,
        )
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
        draft_tokens: int | str = 0,
        loop: str = "refill",
        num_samples: int | None = None,
        alpha: Mapping[str, Any] | None = None,
        ignore_eos: bool = False,
        topk_logprobs: int = 0,
        topk_of: Sequence[str] = TOPK_OF_DEFAULT,
    ) -> SamplingOutput:
        """Sample one completion per prompt. `prompts_t` gives the teacher its own prompts.

        `seed` (an int, or one int per prompt) fixes every draw: a row's tokens depend only on its
        seed, prompts and the models, not on its batch-mates or `batch_size`. `stop` strings end a
        row (finish reason "stop"; the text is cut before the stop string). `sample_from="teacher"`
        or `"theta"` skips mixing and samples one model while both still run (baselines, floors).
        `max_new_tokens` may be one cap per prompt. `batch_size` rows decode at once; a finished
        row's slot is refilled with the next prompt at once (continuous batching). `draft_tokens=k`
        samples by exact speculative rounds: theta drafts k tokens, q* verifies them (same distribution,
        fewer teacher forwards; "auto" picks k per round, engine/draft_policy.py). `loop="static"` runs the
        reference loop instead (fixed micro-batches, one token per step), kept for tests and benchmarks.
        `num_samples=n` samples n completions per prompt: rows prompt-major (prompt 0's n samples
        first), sample 0 of each prompt is what a call without num_samples draws (os_cli/samples.py).
        `alpha={"method": ..., "fixed": ..., "min": ..., "max": ...}` (any of these keys, the recipe's
        `alpha` section) overrides the model's alpha settings for this call only. `ignore_eos=True` runs
        every row to its cap (EOS is an ordinary token; stop strings still end a row): equal work per row.
        `topk_logprobs=K` also returns, per token, the teacher's K most likely ids and their log-probs
        under the distributions in `topk_of` ("t", "theta", "q"; os_cli/topk.py): `out.topk_ids`,
        `out.topk_logprobs`.
        """
        if num_samples is not None:  # a thin layer over this same method: repeat, seed, annotate
            args = {k: v for k, v in locals().items() if k not in ("self", "num_samples", "__class__")}
            return samples.generate_samples(self, num_samples, args)
        prompts, prompts_t = arguments.check_prompts(prompts, prompts_t)
        caps = arguments.check_caps(max_new_tokens, len(prompts))
        drafts = lengths.draft_overrun(arguments.checked_draft_tokens(draft_tokens), max(caps))
        self._check_lengths(prompts, prompts_t, caps, drafts)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if loop not in _LOOPS:
            raise ValueError(f"loop must be one of {', '.join(_LOOPS)}, got {loop!r}")
        seeds = arguments.row_seeds(seed, len(prompts)).tolist()
        limit = min(batch_size or len(prompts), len(prompts))  # no more slots than rows
        topk = topk_spec(topk_logprobs, topk_of, self.vocab_size)
        if loop == "static":
            if topk is not None:
                raise ValueError("topk_logprobs needs loop='refill'; the static reference loop does not record it")
            if draft_tokens:
                raise ValueError("draft_tokens needs loop='refill'; the static reference loop draws one token per step")
            if len(set(caps)) != 1:
                raise ValueError("per-row max_new_tokens needs loop='refill'")
        settings = self._call_settings(
            sample_from,
            stop,
            self._two_streams(prompts, prompts_t),
            alpha,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            ignore_eos=ignore_eos,
            max_new_tokens=max(caps),
            draft_tokens=draft_tokens,
            keep_logits=return_logits,
            keep_q_star=return_q_star_probs,
            topk=topk,
        )
        if loop == "static":
            step_fn = self._step_fn(settings.decode.config, settings.sample_from)
            results = static_loop.decode_static(
                self, prompts, prompts_t if settings.two_streams else None, seeds, limit, settings.decode, step_fn
            )
        else:
            rows = [StreamRow(p, pt, seed=s, max_new_tokens=c) for p, pt, s, c in zip(prompts, prompts_t, seeds, caps)]
            done: dict[int, RowResult] = {}
            stats = SchedulerStats()
            for result, _ in row_stream.decode_stream_rows(self, rows, settings, limit, stats):
                done[result.index] = result
            results = [done[i] for i in range(len(rows))]  # every row ends (decode_rows)
        out = assemble(
            results,
            self.tokenizer.pad_token_id,
            self.vocab_size,
            lambda ids, reason: self._text(ids, reason, settings.stop),
            return_diagnostics,
            skip_decode,
        )
        if loop == "refill":
            out.slot_occupancy = stats.occupancy(limit)
            out.prompt_tokens = {"theta": stats.prompt_tokens_theta, "t": stats.prompt_tokens_t}
        return out

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
        draft_tokens: int | str = 0,
        limit: int | InFlightLimit = 8,
        return_logits: bool = False,
        return_q_star_probs: bool = False,
        skip_decode: bool = False,
        oom_backoff: bool = False,
        stats: SchedulerStats | None = None,
        separate_teacher_prompts: bool = False,
        alpha: Mapping[str, Any] | None = None,
        ignore_eos: bool = False,
        topk_logprobs: int = 0,
        topk_of: Sequence[str] = TOPK_OF_DEFAULT,
    ) -> Iterator[RowOutput]:
        """Decode `rows` (read lazily) with up to `limit` in flight; yield each row as soon as it ends.

        Results come in finishing order; `RowOutput.index` is the row's position in `rows` and
        `RowOutput.id` its `StreamRow.id`. A row's output is the one `generate` gives for the same
        prompts and seed. Pass an `InFlightLimit` to lower the limit while iterating; with
        `oom_backoff=True` an out-of-memory error halves it (see `limit.backoffs`) instead of failing,
        and only the rows beyond the new limit restart (with the same output). `stats` collects
        occupancy and acceptance counters. With one model (theta = teacher) rows share one stream
        unless `separate_teacher_prompts=True` gives the teacher's prompts (`StreamRow.prompt_t`) their
        own stream; a row with a distinct `prompt_t` is refused otherwise. `alpha`, `ignore_eos` and
        `topk_logprobs` / `topk_of` apply to this call only, as in `generate`.
        """
        rows = iter(rows)
        topk = topk_spec(topk_logprobs, topk_of, self.vocab_size)
        cap = arguments.checked_cap(max_new_tokens)
        settings = self._call_settings(
            sample_from,
            stop,
            not self.same_model or separate_teacher_prompts,
            alpha,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            ignore_eos=ignore_eos,
            max_new_tokens=cap,
            draft_tokens=draft_tokens,
            keep_logits=return_logits,
            keep_q_star=return_q_star_probs,
            oom_backoff=oom_backoff,
            topk=topk,
        )
        for result, row in row_stream.decode_stream_rows(self, rows, settings, limit, stats):
            text = None if skip_decode else self._text(result.tokens.tolist(), result.finish_reason, settings.stop)
            yield RowOutput(
                index=result.index,
                id=row.id,
                text=text,
                token_ids=result.tokens,
                finish_reason=result.finish_reason,
                traces=result.traces,
                logits=result.logits,
                q_star_probs=result.q_star,
                topk_ids=result.topk_ids,
                topk_logprobs=result.topk_logprobs,
            )

    # ------------------------------------------------------------------ internals

    def _sampler_config(
        self, temperature: float, top_k: int, top_p: float, alpha: Mapping[str, Any] | None = None
    ) -> SamplerConfig:
        """The validated config of one call: the model's attributes, `alpha` (per call) over them (call_config.py)."""
        return call_config.sampler_config(self, temperature, top_k, top_p, alpha)

    def _step_fn(self, config: SamplerConfig, sample_from: str):
        """q* for [n, V] logits of rows at per-row steps, exactly as every loop draws it (call_config.py)."""
        return call_config.step_fn(self, config, sample_from)

    def _call_settings(self, sample_from: str, stop, two_streams: bool, alpha, **options) -> CallSettings:
        """The checked settings of one call, built once (call_config.call_settings)."""
        return call_config.call_settings(self, sample_from, stop, two_streams, alpha, **options)

    def _check_lengths(self, prompts, prompts_t, caps: Sequence[int], drafts: int = 0) -> None:
        """Every prompt must tokenize to at least one token and fit its model's context with its new tokens
        (and `drafts`, lengths.draft_overrun: the positions speculative rounds may feed past them)."""
        sides = [("prompts", prompts, self.tokenizer)]
        if prompts_t is not prompts or self.tokenizer_t is not self.tokenizer or self.context_t != self.context_theta:
            sides.append(("prompts_t", prompts_t, self.tokenizer_t))
        for name, texts, tokenizer in sides:
            for i, ids in enumerate(lengths.prompt_token_ids(tokenizer, texts)):
                self._check_length(name, i, len(ids), caps[i], drafts)

    def _check_length(self, name: str, index: int, length: int, cap: int, drafts: int = 0) -> None:
        context, path = (
            (self.context_t, self.model_t_path) if name == "prompts_t" else (self.context_theta, self.model_theta_path)
        )
        problem = lengths.length_problem(length, cap, context, drafts)
        if problem is not None:
            lower = "max_new_tokens" + (" or draft_tokens" if drafts else "")
            raise ValueError(f"{name}[{index}]: {problem} ({path}); shorten the prompt or {lower}")

    def _two_streams(self, prompts, prompts_t) -> bool:
        """One model and identical prompts: pi_t = pi_theta at every step, so one stream serves both.
        One model with its own teacher prompts (a hint) needs a second KV cache (stacked: engine/stacked.py)."""
        return not self.same_model or list(prompts_t) != list(prompts)

    def _eos_ids(self) -> list[int]:
        ids: set[int | None] = set()
        for model, tokenizer in ((self.model_theta, self.tokenizer), (self.model_t, self.tokenizer_t)):
            configured = getattr(model.generation_config, "eos_token_id", None)
            ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
            ids.add(tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None and i < self.vocab_size)

    def encode(self, texts: Sequence[str], teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask on the model's input device, as `generate` feeds them.

        Texts that already start with BOS (chat templates) get no second one.
        """
        side = "prompts_t" if teacher else "prompts"
        rows = [self._token_ids(text, side, i, teacher=teacher) for i, text in enumerate(texts)]
        pad = (self.tokenizer_t if teacher else self.tokenizer).pad_token_id
        return engine.left_pad(rows, pad, self.device_t if teacher else self.device)  # each model's input device

    def _token_ids(self, text: str, side: str, index: int, teacher: bool = False) -> list[int]:
        ids = lengths.prompt_token_ids(self.tokenizer_t if teacher else self.tokenizer, [text])[0]
        if not ids:
            raise ValueError(f"{side}[{index}] tokenizes to no tokens: {text!r}")
        return ids

    def _text(self, ids: list[int], reason: str, stop: Sequence[str]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return cut_at_stop(text, stop) if reason == "stop" else text
