"""The checked settings of one `OptimalSamplingModel` call, from the model's attributes and the call's
arguments: sampler_config (the alpha settings, per call over the model's), step_fn (q* as every loop draws
it) and call_settings (CallSettings: DecodeSettings plus what only the API reads)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from os_cli.api import arguments
from os_cli.api.arguments import CallSettings
from os_cli.api.rows import stops
from os_cli.engine.settings import DecodeSettings
from os_cli.engine.stop_strings import stop_checker
from os_cli.mix.alpha import ALPHA_METHODS
from os_cli.mix.sampler import SamplerConfig, mixture_step


def sampler_config(
    model, temperature: float, top_k: int, top_p: float, alpha: Mapping[str, Any] | None = None
) -> SamplerConfig:
    """The validated config of one call: the model's attributes, `alpha` (per call) over them."""
    chosen: dict[str, Any] = {
        "method": model.alpha_method,
        "fixed": model.fixed_alpha,
        "min": model.alpha_min,
        "max": model.alpha_max,
    }  # by the keys of `alpha` (the recipe's alpha section)
    if alpha is not None:
        unknown = sorted(set(alpha) - set(chosen)) if isinstance(alpha, Mapping) else None
        if unknown is None or unknown:
            raise ValueError(f"alpha must be a dict with keys among {', '.join(chosen)}, got {alpha!r}")
        chosen.update(alpha)
    alpha_method = chosen["method"]
    if alpha_method not in ALPHA_METHODS:
        raise ValueError(f"alpha_method {alpha_method!r} is unknown; choose one of {', '.join(ALPHA_METHODS)}")
    return SamplerConfig(
        alpha_method=alpha_method,
        fixed_alpha=chosen["fixed"],
        alpha_min=chosen["min"],
        alpha_max=chosen["max"],
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        constraint_to_target=model.constraint_to_target,
        target_top_k=model.target_top_k,
        target_top_p=model.target_top_p,
    )


def step_fn(model, config: SamplerConfig, sample_from: str):
    """q* for [n, V] logits of rows at per-row steps, exactly as every loop draws it."""
    special = None
    if model.force_target_for_special_tokens and model.special_token_ids:
        special = torch.zeros(model.vocab_size, dtype=torch.bool, device=model.device)
        special[model.special_token_ids] = True
    force_first = model.force_target_for_first_token

    def step_fn(logits_theta, logits_t, keys, steps, alpha_init=None):
        return mixture_step(
            logits_theta,
            logits_t,
            config,
            row_keys=keys,
            step=steps,
            force_teacher_tokens=special,
            force_teacher_rows=(steps == 0) if force_first else None,
            sample_from=sample_from,
            alpha_init=alpha_init,
        )

    return step_fn


def call_settings(
    model,
    sample_from: str,
    stop,
    two_streams: bool,
    alpha,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    ignore_eos: bool,
    **decode,
) -> CallSettings:
    """The checked settings of one call, built once: `decode` are DecodeSettings fields taken as they are
    (max_new_tokens, draft_tokens, keep_logits, ...); the rest come from this model and the arguments."""
    arguments.check_sample_from(sample_from)
    arguments.check_draft_tokens(decode.get("draft_tokens", 0), two_streams)
    config = sampler_config(model, temperature, top_k, top_p, alpha)
    stop = tuple(stops(stop))
    return CallSettings(
        DecodeSettings(
            config=config,
            eos_ids=() if ignore_eos else tuple(model.eos_token_ids),
            pad_id=model.tokenizer.pad_token_id,
            stop_fn=stop_checker(model.tokenizer.decode, stop) if stop else None,
            **decode,
        ),
        sample_from=sample_from,
        stop=stop,
        two_streams=two_streams,
    )
