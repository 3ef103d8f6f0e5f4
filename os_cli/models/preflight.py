"""Cheap checks made before any model loads: the models' context lengths (config.json only), the
placement a recipe asks for, and whether the Hugging Face Hub can be reached at all.

Nothing here loads weights or prints. Public functions:

- `context_length(config, tokenizer) -> int | None`: the longest sequence a model takes: the smaller of
  the config's `max_position_embeddings` (or `n_positions`, ...) and the tokenizer's `model_max_length`,
  each where it is set to a real value (tokenizers without a limit hold a 1e30 placeholder).
- `model_contexts(models, places, tokenizer, tokenizer_t) -> {"theta": n, "teacher": n}`: both models'
  context lengths from their config.json and tokenizers (no weights loaded).
- `placement_problem(models) -> (key path, message) | None`: the first device, device_map or max_memory
  problem (recipe/machine_checks.py), or a quantization bitsandbytes cannot run here, over both models'
  effective settings (the CLI's check before any model loads).
- `hub_offline_note(models, dataset, places) -> str | None`: when the recipe names something on the hub and
  HF_HUB_OFFLINE is unset, probe the hub once (one HEAD request, a few seconds at most); when it cannot be
  reached, switch this process to offline mode (cached files only) and return a note saying so.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from os_cli.recipe.machine_checks import device_map_problem, device_problem, max_memory_problem
from os_cli.recipe.places import hub_offline
from os_cli.recipe.typed import Dataset, Models

# Tokenizers without a length limit report int(1e30); anything this large is "not set".
_UNSET_LENGTH = 10**9
_CONFIG_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
HUB_PROBE_TIMEOUT_S = 3.0


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


def model_context(location: str, tokenizer, **kwargs) -> int | None:
    """`context_length` of a model folder or hub name, reading only its config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError):
        config = None  # the model load reports it, with the model's name
    return context_length(config, tokenizer)


def model_contexts(models: Models, places, tokenizer, tokenizer_t) -> dict:
    """The context length of theta and the teacher, from their config.json and tokenizers (no weights)."""
    from os_cli.models.hub import recipe_load_kwargs

    kwargs = recipe_load_kwargs(models)
    theta = places.theta
    teacher = places.teacher or theta
    out = {"theta": model_context(theta, tokenizer, **kwargs)}
    out["teacher"] = out["theta"] if teacher == theta else model_context(teacher, tokenizer_t, **kwargs)
    return out


# ----------------------------------------------------------------------------------------------
# Placement: devices, device maps, max_memory, quantization
# ----------------------------------------------------------------------------------------------


def placement_problem(models: Models) -> tuple[str, str] | None:
    """The first placement or quantization setting of either model that cannot run here (see module doc)."""
    from os_cli.models.loading import bitsandbytes_problem
    from os_cli.recipe import model_settings

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
                name = models.name(role) or models.theta
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


def hub_names(models: Models, dataset: Dataset, places) -> list[str]:
    """The recipe's models and dataset that are hub names (not local, not builtin; `places.hub`)."""
    values = [
        ("theta", "models.theta", models.theta),
        ("teacher", "models.teacher", models.teacher),
        ("dataset", "dataset.source", dataset.source),
    ]
    return [f"{key} ({value})" for role, key, value in values if role in places.hub]


def hub_offline_note(models: Models, dataset: Dataset, places) -> str | None:
    if hub_offline():
        return None
    names = hub_names(models, dataset, places)
    if not names or hub_reachable():
        return None
    go_offline()
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return (
        f"the Hugging Face Hub ({endpoint}) is unreachable from here: running offline (HF_HUB_OFFLINE=1), "
        f"with cached files only, for {', '.join(names)}"
    )
