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
- `length_problem(n, max_new_tokens, context, drafts=0) -> str | None`: why a prompt of `n` tokens cannot be
  sampled (empty, or `n + max_new_tokens + drafts` beyond the context; `drafts = draft_overrun(k, max_new_tokens)`,
  the positions speculative rounds may feed past a row's cap).
- `model_contexts(models, places, tokenizer, tokenizer_t) -> {"theta": n, "teacher": n}`: both models'
  context lengths from their config.json and tokenizers (no weights loaded).
- `screen_prompts(prompts, rendered, tokenizer, tokenizer_t, contexts, *, models, max_new_tokens, draft_tokens)`:
  applies the two checks above to every rendered row of a recipe (its `prompts` and `models` sections,
  `sampling.max_new_tokens` and `sampling.draft_tokens`), for theta's and the teacher's prompts: a bad row raises `UserError`
  naming the row id and the lengths, or goes to `rendered.errors` with `prompts.on_bad_row: skip`.
- `device_problem(value)`, `device_map_problem(value)`, `max_memory_problem(value)`: why a device,
  a `device_map` or a `max_memory` cannot be used (syntax with `hardware=False`; with `hardware=True`
  also CUDA present and device indices below `torch.cuda.device_count()`).
- `placement_problem(models) -> (key path, message) | None`: the first of those problems, or a
  quantization bitsandbytes cannot run here, over both models' effective settings (the CLI's check
  before any model loads).
- `hub_offline_note(models, dataset, places) -> str | None`: when the recipe names something on the hub and
  HF_HUB_OFFLINE is unset, probe the hub once (one HEAD request, a few seconds at most); when it cannot be
  reached, switch this process to offline mode (cached files only) and return a note saying so.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UserError
from .places import hub_offline

# Tokenizers without a length limit report int(1e30); anything this large is "not set".
_UNSET_LENGTH = 10**9
_CONFIG_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
HUB_PROBE_TIMEOUT_S = 3.0


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


def draft_overrun(draft_tokens: int, max_new_tokens: int) -> int:
    """Positions past a row's last new token that speculative rounds may feed: a round drafts up to
    min(k, the most tokens any row in flight has left) for every row, so a row near its cap can be fed
    up to min(k, max_new_tokens) drafted tokens beyond it (they are never emitted, but take positions)."""
    return min(draft_tokens, max_new_tokens) if draft_tokens else 0


def length_problem(n_tokens: int, max_new_tokens: int, context: int | None, drafts: int = 0) -> str | None:
    """`drafts`: draft_overrun(...) of the run, counted on top of the new tokens."""
    if n_tokens == 0:
        return "the prompt is empty (0 tokens)"
    if context is not None and n_tokens + max_new_tokens + drafts > context:
        with_drafts = f" and up to {drafts} drafted past them (draft_tokens)" if drafts else ""
        return (f"the prompt has {n_tokens} tokens; with {max_new_tokens} new tokens{with_drafts} that is "
                f"{n_tokens + max_new_tokens + drafts} > {context}, the model's context")
    return None


def model_context(location: str, tokenizer, **kwargs) -> int | None:
    """`context_length` of a model folder or hub name, reading only its config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError):
        config = None  # the model load reports it, with the model's name
    return context_length(config, tokenizer)


def model_contexts(models: Mapping, places, tokenizer, tokenizer_t) -> dict:
    """The context length of theta and the teacher, from their config.json and tokenizers (no weights)."""
    from .hub import recipe_load_kwargs

    kwargs = recipe_load_kwargs(models)
    theta = places.theta
    teacher = places.teacher or theta
    out = {"theta": model_context(theta, tokenizer, **kwargs)}
    out["teacher"] = out["theta"] if teacher == theta else model_context(teacher, tokenizer_t, **kwargs)
    return out


def screen_prompts(prompts: Mapping, rendered, tokenizer, tokenizer_t, contexts: Mapping[str, int | None], *,
                   models: Mapping, max_new_tokens: int, draft_tokens: int = 0) -> None:
    """Check every rendered row's two prompts (empty, too long for the context) in place; see module doc."""
    max_new, drafts = max_new_tokens, draft_overrun(draft_tokens, max_new_tokens)
    names = {"theta": models["theta"], "teacher": models["teacher"] or models["theta"]}
    for role, context in contexts.items():
        if context is not None and max_new + drafts >= context:
            with_drafts = (f" and speculative rounds may draft {drafts} past it (sampling.draft_tokens: {draft_tokens})"
                           if drafts else "")
            raise UserError(f"sampling.max_new_tokens is {max_new}{with_drafts}, but models.{role} ({names[role]}) has "
                            f"a context of {context} tokens: no prompt fits; lower sampling.max_new_tokens"
                            + (" or sampling.draft_tokens" if drafts else ""))
    if not rendered.items:
        return
    own_teacher = prompts["teacher"] is not None
    lengths = {"theta": _lengths(tokenizer, [it.prompt for it in rendered.items])}
    if own_teacher or tokenizer_t is not tokenizer:
        lengths["teacher"] = _lengths(tokenizer_t, [it.prompt_t for it in rendered.items])
    else:
        lengths["teacher"] = lengths["theta"]
    skip = prompts["on_bad_row"] == "skip"
    kept = []
    for i, item in enumerate(rendered.items):
        problem = None
        for role in ("theta", "teacher"):
            problem = length_problem(lengths[role][i], max_new, contexts.get(role), drafts)
            if problem is not None:
                problem = f"prompts.{role}: {problem} (models.{role}: {names[role]})"
                break
        if problem is None:
            kept.append(item)
            continue
        if not skip:
            lower = "sampling.max_new_tokens" + (" or sampling.draft_tokens" if drafts else "")
            raise UserError(f"dataset row {item.id!r}: {problem}; shorten the prompt or {lower}, "
                            f"or set prompts.on_bad_row: skip to write such rows to errors.jsonl")
        from .record_format import json_safe

        rendered.errors.append({"id": item.id, "reason": problem, "row": json_safe(item.row)})
    rendered.items[:] = kept


# ----------------------------------------------------------------------------------------------
# Placement: devices, device maps, max_memory, quantization
# ----------------------------------------------------------------------------------------------

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
DEVICE_ALLOWED = "auto, cpu, cuda or cuda:N"
# from_pretrained's device_map strategies; a mapping {module name: device} is the other form.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# The sizes accelerate's convert_file_size_to_int reads as bytes (it reads a lowercase b as bits).
_MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_index_problem(index: int, what: str) -> str | None:
    count = _cuda_count()
    if count == 0:
        return f"{what} asks for CUDA, but torch sees no CUDA device here (use auto or cpu)"
    if index >= count:
        return f"{what} asks for CUDA device {index}, but torch sees {count} (cuda:0..cuda:{count - 1})"
    return None


def device_problem(value: Any, hardware: bool = True) -> str | None:
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        return f"device must be {DEVICE_ALLOWED}, got {value!r}"
    if hardware and value.startswith("cuda"):
        return cuda_index_problem(int(value[5:] or 0), f"device {value!r}")
    return None


def _map_value_problem(value: Any, hardware: bool) -> str | None:
    """One device of a device_map mapping: a GPU index, cpu, cuda or cuda:N."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return cuda_index_problem(value, f"device {value}") if hardware else None
    if isinstance(value, str) and value != "auto" and DEVICE_PATTERN.match(value):
        return device_problem(value, hardware)
    return f"a device_map device must be a GPU index (0, 1, ...), cpu, cuda or cuda:N, got {value!r}"


def device_map_problem(value: Any, hardware: bool = True) -> str | None:
    if isinstance(value, str):
        if value in DEVICE_MAP_STRATEGIES:
            return None
        return (f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} or a mapping of module names "
                f"to devices (e.g. {{\"\": 0}}), got {value!r}")
    if not isinstance(value, Mapping) or not value:
        return f"device_map must be a strategy name or a non-empty mapping of module names to devices, got {value!r}"
    for module, device in value.items():
        if not isinstance(module, str):
            return f"device_map keys are module names (strings; \"\" is the whole model), got {module!r}"
        problem = _map_value_problem(device, hardware)
        if problem:
            return f"device_map[{module!r}]: {problem}"
    return None


def max_memory_problem(value: Any, hardware: bool = True) -> str | None:
    if not isinstance(value, Mapping) or not value:
        return f"max_memory must be a mapping of devices (GPU index or cpu) to sizes (e.g. {{0: 20GiB, cpu: 64GiB}}), got {value!r}"
    for device, size in value.items():
        if device != "cpu" and not (isinstance(device, int) and not isinstance(device, bool) and device >= 0):
            return f"max_memory keys are GPU indices (0, 1, ...) or cpu, got {device!r}"
        if isinstance(device, int) and hardware:
            problem = cuda_index_problem(device, f"max_memory[{device}]")
            if problem:
                return problem
        good = (isinstance(size, int) and not isinstance(size, bool) and size > 0) or (
            isinstance(size, str) and _MEMORY_SIZE.match(size.strip()))
        if not good:
            return (f"max_memory[{device!r}] must be a size in KiB, MiB, GiB, KB, MB or GB (like 20GiB), "
                    f"or a number of bytes, got {size!r}")
    return None


def placement_problem(models: Mapping) -> tuple[str, str] | None:
    """The first placement or quantization setting of either model that cannot run here (see module doc)."""
    from .models import bitsandbytes_problem
    from .recipe import model_settings

    for role in ("theta", "teacher"):
        settings = model_settings(models, role)
        for key, check in (("device_map", device_map_problem), ("max_memory", max_memory_problem)):
            value, path = settings[key]
            if value is not None:
                problem = check(value)
                if problem:
                    return path, problem
        device, path = settings["device"]
        if settings["device_map"][0] is None:
            problem = device_problem(device)
            if problem:
                return path, problem
        quantization, path = settings["quantization"]
        if quantization != "none":
            problem = bitsandbytes_problem()
            if problem:
                name = models[role] or models["theta"]
                return path, f"{quantization} loading of the {role} model ({name}) cannot run here: {problem}"
    return None


# ----------------------------------------------------------------------------------------------
# The hub
# ----------------------------------------------------------------------------------------------


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


def hub_names(models: Mapping, dataset: Mapping, places) -> list[str]:
    """The recipe's models and dataset that are hub names (not local, not builtin; `places.hub`)."""
    values = [("theta", "models.theta", models["theta"]), ("teacher", "models.teacher", models["teacher"]),
              ("dataset", "dataset.source", dataset["source"])]
    return [f"{key} ({value})" for role, key, value in values if role in places.hub]


def hub_offline_note(models: Mapping, dataset: Mapping, places) -> str | None:
    if hub_offline():
        return None
    names = hub_names(models, dataset, places)
    if not names or hub_reachable():
        return None
    go_offline()
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return (f"the Hugging Face Hub ({endpoint}) is unreachable from here: running offline (HF_HUB_OFFLINE=1), "
            f"with cached files only, for {', '.join(names)}")
