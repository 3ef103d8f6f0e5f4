"""Cheap checks made before any model loads: model folders, attention, prompt length against the
models' context, and whether the Hugging Face Hub can be reached at all.

Nothing here loads weights or prints. Public functions:

- `model_folder_problem(path) -> str | None`: why a local folder is not a model (no config.json).
- `attn_problem(requested, device) -> str | None`: why an attention implementation cannot run here.
- `context_length(config, tokenizer) -> int | None`: the longest sequence a model takes: the smaller of
  the config's `max_position_embeddings` (or `n_positions`, ...) and the tokenizer's `model_max_length`,
  each where it is set to a real value (tokenizers without a limit hold a 1e30 placeholder).
- `prompt_token_ids(tokenizer, texts) -> list[list[int]]`: the prompt ids exactly as the engine feeds
  them (texts that already start with BOS, like chat templates, get no second one).
- `length_problem(n, max_new_tokens, context) -> str | None`: why a prompt of `n` tokens cannot be
  sampled (empty, or `n + max_new_tokens` beyond the context).
- `screen_prompts(recipe, rendered, tokenizer, tokenizer_t, contexts)`: applies the two checks above to
  every rendered row of a recipe, for theta's and the teacher's prompts: a bad row raises `UserError`
  naming the row id and the lengths, or goes to `rendered.errors` with `prompts.on_bad_row: skip`.
- `hub_offline_note(recipe) -> str | None`: when the recipe names something on the hub and
  HF_HUB_OFFLINE is unset, probe the hub once (one HEAD request, a few seconds at most); when it cannot be
  reached, switch this process to offline mode (cached files only) and return a note saying so.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UserError

# Tokenizers without a length limit report int(1e30); anything this large is "not set".
_UNSET_LENGTH = 10**9
_CONFIG_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def model_folder_problem(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        return (f"the folder {path} has no config.json, so it is not a model saved with save_pretrained "
                f"(point at the folder that holds config.json and the weights)")
    return None


def attn_problem(requested: str | None, device: Any) -> str | None:
    if requested != "flash_attention_2":
        return None
    if importlib.util.find_spec("flash_attn") is None:
        return ("attn_implementation flash_attention_2 needs the flash-attn package, which is not installed here "
                "(pip install -e '.[flash]' on a CUDA machine), or use sdpa (auto picks it)")
    if str(device) == "cpu" or str(getattr(device, "type", device)) == "cpu":
        return "attn_implementation flash_attention_2 runs on CUDA only, but the device is cpu; use sdpa"
    return None


def context_length(config: Any, tokenizer: Any = None) -> int | None:
    candidates = []
    for key in _CONFIG_LENGTH_KEYS:
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _UNSET_LENGTH:
            candidates.append(value)
            break
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _UNSET_LENGTH:
        candidates.append(value)
    return min(candidates) if candidates else None


def prompt_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    bos = tokenizer.bos_token
    out: list = [None] * len(texts)
    for add in (True, False):  # one batch call per setting: a fast tokenizer encodes a batch in one go
        rows = [i for i, t in enumerate(texts) if (not (bos and t.startswith(bos))) == add]
        if rows:
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=add).input_ids
            for i, ids in zip(rows, encoded):
                out[i] = list(ids)
    return out


def _lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Prompt lengths in tokens; an empty text counts as 0 even where the tokenizer would add a BOS."""
    return [len(ids) if text else 0 for text, ids in zip(texts, prompt_token_ids(tokenizer, texts))]


def length_problem(n_tokens: int, max_new_tokens: int, context: int | None) -> str | None:
    if n_tokens == 0:
        return "the prompt is empty (0 tokens)"
    if context is not None and n_tokens + max_new_tokens > context:
        return (f"the prompt has {n_tokens} tokens; with {max_new_tokens} new tokens that is "
                f"{n_tokens + max_new_tokens} > {context}, the model's context")
    return None


def model_context(location: str, tokenizer, **kwargs) -> int | None:
    """`context_length` of a model folder or hub name, reading only its config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError):
        config = None  # the model load reports it, with the model's name
    return context_length(config, tokenizer)


def screen_prompts(recipe: Mapping, rendered, tokenizer, tokenizer_t, contexts: Mapping[str, int | None]) -> None:
    """Check every rendered row's two prompts (empty, too long for the context) in place; see module doc."""
    max_new = recipe["sampling"]["max_new_tokens"]
    models = recipe["models"]
    names = {"theta": models["theta"], "teacher": models["teacher"] or models["theta"]}
    for role, context in contexts.items():
        if context is not None and max_new >= context:
            raise UserError(f"sampling.max_new_tokens is {max_new}, but models.{role} ({names[role]}) has a context "
                            f"of {context} tokens: no prompt fits; lower sampling.max_new_tokens")
    if not rendered.items:
        return
    own_teacher = recipe["prompts"]["teacher"] is not None
    lengths = {"theta": _lengths(tokenizer, [it.prompt for it in rendered.items])}
    if own_teacher or tokenizer_t is not tokenizer:
        lengths["teacher"] = _lengths(tokenizer_t, [it.prompt_t for it in rendered.items])
    else:
        lengths["teacher"] = lengths["theta"]
    skip = recipe["prompts"]["on_bad_row"] == "skip"
    kept = []
    for i, item in enumerate(rendered.items):
        problem = None
        for role in ("theta", "teacher"):
            problem = length_problem(lengths[role][i], max_new, contexts.get(role))
            if problem is not None:
                problem = f"prompts.{role}: {problem} (models.{role}: {names[role]})"
                break
        if problem is None:
            kept.append(item)
            continue
        if not skip:
            raise UserError(f"dataset row {item.id!r}: {problem}; shorten the prompt or sampling.max_new_tokens, "
                            f"or set prompts.on_bad_row: skip to write such rows to errors.jsonl")
        from .data import json_safe

        rendered.errors.append({"id": item.id, "reason": problem, "row": json_safe(item.row)})
    rendered.items[:] = kept


# ----------------------------------------------------------------------------------------------
# The hub
# ----------------------------------------------------------------------------------------------


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def go_offline() -> None:
    """Make this process use cached hub files only (environment and the libraries' imported flags)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = True
        if hasattr(datasets_config, "HF_DATASETS_OFFLINE"):
            datasets_config.HF_DATASETS_OFFLINE = True
    except ImportError:
        pass


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub endpoint (HF_ENDPOINT, default https://huggingface.co), `timeout` s at most;
    any HTTP answer counts as reachable."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:  # the hub answered, if only with an error status
            result.append(True)
        except (OSError, ValueError):  # no route, refused, TLS failure, timeout, a malformed endpoint
            result.append(False)

    # In a thread, so a name lookup that hangs (no resolver reachable) is bounded by the timeout too.
    thread = threading.Thread(target=probe, name="os-sample-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_names(recipe: Mapping) -> list[str]:
    """The recipe's models and dataset that are hub names (not local, not builtin)."""
    from .recipe import BUILTIN_PREFIX, resolve_local_path

    out = []
    values = [("models.theta", recipe["models"]["theta"]), ("models.teacher", recipe["models"]["teacher"]),
              ("dataset.source", recipe["dataset"]["source"])]
    for key, value in values:
        if value and not value.startswith(BUILTIN_PREFIX) and resolve_local_path(recipe, value) is None:
            out.append(f"{key} ({value})")
    return out


def hub_offline_note(recipe: Mapping) -> str | None:
    if hub_is_offline():
        return None
    names = hub_names(recipe)
    if not names or hub_reachable():
        return None
    go_offline()
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return (f"the Hugging Face Hub ({endpoint}) is unreachable from here: running offline (HF_HUB_OFFLINE=1), "
            f"with cached files only, for {', '.join(names)}")
