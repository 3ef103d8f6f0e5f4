"""Loading the two models and their tokenizer: names, devices, dtypes, attention and quantization.

Everything goes through `from_pretrained`. Choices the user did not make explicitly (device,
dtype, attention implementation) are logged on the `os_cli` logger, never printed
(`describe_placement` words where a model landed).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from os_cli.errors import UserError
from os_cli.quiet import quiet_loading
from os_cli.recipe.machine_checks import attn_problem, model_folder_problem
from os_cli.recipe.places import hub_offline, resolve_model_path  # noqa: F401 - models.resolve_model_path is used widely

log = logging.getLogger("os_cli")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_QUANT_KEYS = ("load_in_4bit", "load_in_8bit")
QUANT_TYPES = ("nf4", "fp4")  # bnb_4bit_quant_type


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` is cuda where torch sees a CUDA device, else cpu; cuda:N must name a device torch sees."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from os_cli.recipe.machine_checks import DEVICE_ALLOWED, cuda_index_problem

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"device {device!r} is not a valid device (use {DEVICE_ALLOWED})") from exc
    if resolved.type == "cuda":
        problem = cuda_index_problem(resolved.index or 0, f"device {str(device)!r}")
        if problem:
            raise UserError(problem)
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA (float16 where the card lacks bf16) and float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def choose_attn_implementation(requested: str | None, device: torch.device) -> str:
    """flash_attention_2 when flash-attn is importable on CUDA, else sdpa, unless the user chose."""
    if requested not in (None, "auto"):
        problem = attn_problem(requested, device)
        if problem:
            raise UserError(problem)
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def pop_quantization_config(kwargs: dict, role: str = "theta", *, check: bool = True):
    """Turn `load_in_4bit` / `load_in_8bit` / `bnb_*` keyword arguments into a BitsAndBytesConfig.

    With `check`, a setting bitsandbytes cannot run here (not installed, no CUDA device) is a
    `UserError` naming `role`, raised before anything loads.
    """
    quant = {k: kwargs.pop(k) for k in list(kwargs) if k in _QUANT_KEYS or k.startswith("bnb_")}
    if not any(quant.get(k) for k in _QUANT_KEYS):
        return None
    if check:
        problem = bitsandbytes_problem()
        if problem:
            bits = "4-bit" if quant.get("load_in_4bit") else "8-bit"
            raise UserError(f"{role}: {bits} loading (bitsandbytes) cannot run here: {problem}")
    quant_type = quant.get("bnb_4bit_quant_type")
    if quant_type is not None and quant_type not in QUANT_TYPES:
        raise UserError(f"{role}: bnb_4bit_quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    compute = quant.get("bnb_4bit_compute_dtype")
    if isinstance(compute, str):
        quant["bnb_4bit_compute_dtype"] = resolve_dtype(compute, torch.device("cuda"))
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**quant)


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes 4/8-bit loading cannot run in this process, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "the bitsandbytes package is not installed (pip install -e '.[quant]')"
    if not torch.cuda.is_available():
        return "it needs a CUDA device, and torch sees none here"
    return None


@dataclass
class LoadSpec:
    """How one model is loaded: its device (the input device for a `device_map`), dtype and the other
    `from_pretrained` arguments (device_map, max_memory, quantization_config, revision, ...)."""

    role: str
    device: torch.device
    dtype: torch.dtype
    kwargs: dict

    @property
    def placed_by_map(self) -> bool:
        return "device_map" in self.kwargs

    def same_load(self, other: LoadSpec) -> bool:
        return (self.device, self.dtype, repr(sorted(self.kwargs.items(), key=lambda kv: kv[0]))) == (
            other.device,
            other.dtype,
            repr(sorted(other.kwargs.items(), key=lambda kv: kv[0])),
        )


def load_spec(role: str, device, dtype, kwargs: dict) -> LoadSpec:
    """Check and resolve one model's placement before anything loads (`UserError`s name `role`).

    `device_map` (a strategy name or a {module: device} mapping) places the model instead of `device`;
    `max_memory` needs a `device_map`. Quantized models without a map go whole to their CUDA device.
    """
    kwargs = dict(kwargs)
    device_map, max_memory = kwargs.get("device_map"), kwargs.get("max_memory")
    from os_cli.recipe.machine_checks import device_map_problem, max_memory_problem

    if device_map is None:
        kwargs.pop("device_map", None)
        if max_memory is not None:
            raise UserError(f"{role}: max_memory needs a device_map (e.g. device_map='auto')")
        kwargs.pop("max_memory", None)
    else:
        problem = device_map_problem(device_map) or (max_memory_problem(max_memory) if max_memory is not None else None)
        if problem:
            raise UserError(f"{role}: {problem}")
        if max_memory is None:
            kwargs.pop("max_memory", None)
        else:  # from_pretrained rewrites max_memory in place: keep the caller's mapping as given
            kwargs["max_memory"] = dict(max_memory)
        if isinstance(device_map, dict):
            kwargs["device_map"] = dict(device_map)
        device = _map_device(device_map)
    try:
        resolved = resolve_device(device)
    except UserError as exc:
        raise UserError(f"{role}: {exc}") from None
    quantization_config = pop_quantization_config(kwargs, role)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if resolved.type != "cuda":
            raise UserError(
                f"{role}: 4-bit/8-bit loading (bitsandbytes) needs a CUDA device, but the device is {resolved}"
            )
        kwargs.setdefault("device_map", {"": resolved.index or 0})
    return LoadSpec(role, resolved, resolve_dtype(dtype, resolved), kwargs)


def _map_device(device_map) -> str:
    """The device a `device_map` puts the first module on (used for dtype `auto`, before loading)."""
    if isinstance(device_map, str):
        return "cuda" if device_map != "cpu" and torch.cuda.is_available() else "cpu"
    first = next(iter(device_map.values()))
    return f"cuda:{first}" if isinstance(first, int) else str(first)


def cache_kwarg(model) -> str:
    """The forward keyword that takes a KV cache: transformers >= 5.2x renamed `past_key_values` to `cache`;
    whichever this model's forward knows."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def input_device(model) -> torch.device:
    """Where a loaded model takes its input ids: where its embedding runs. Under a device_map that is
    the execution device accelerate gave the embedding (its weights may be offloaded)."""
    embedding = model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    for one in [hook, *getattr(hook, "hooks", ())]:  # a SequentialHook holds several
        execution = getattr(one, "execution_device", None)
        if execution is not None:
            return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    device = embedding.weight.device
    return device if device.type != "meta" else torch.device("cpu")


def load_tokenizer(path: str, role: str = "theta", **kwargs):
    """The tokenizer of the model in `path`; `role` ("theta" or "teacher") names it in errors."""
    from transformers import AutoTokenizer

    _check_folder(path, role)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(_load_failure(f"{role} tokenizer", path, exc), exit_code=1) from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere; any id works, EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str,
    spec: LoadSpec | None = None,
    *,
    attn_implementation: str,
    role: str | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs,
):
    """Load one model as `spec` says (or from `device`/`dtype`/`kwargs`, checked by `load_spec`)."""
    from transformers import AutoModelForCausalLM

    if spec is None:
        spec = load_spec(role or "theta", device, dtype, kwargs)
    role = role or spec.role
    _check_folder(path, role)
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=spec.dtype, attn_implementation=attn_implementation, **spec.kwargs
            )
    except (OSError, ImportError) as exc:
        raise UserError(_load_failure(f"{role} model", path, exc), exit_code=1) from exc
    if not spec.placed_by_map:
        # PreTrainedModel.to is `@wraps(torch.nn.Module.to)`, which types its first argument as the model
        model.to(spec.device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    return model


def check_same_vocabulary(tokenizer_theta, tokenizer_t, path_theta: str, path_t: str) -> None:
    """Both models must map every token string to the same id, or mixing their distributions is meaningless."""
    vocab_theta, vocab_t = tokenizer_theta.get_vocab(), tokenizer_t.get_vocab()
    if vocab_theta == vocab_t:
        return
    differing = sorted(set(vocab_theta.items()) ^ set(vocab_t.items()), key=lambda kv: kv[1])[:3]
    raise UserError(
        f"the tokenizers of {path_theta} ({len(vocab_theta)} tokens) and {path_t} ({len(vocab_t)} tokens) differ "
        f"(first differences: {differing}); optimal sampling needs one shared vocabulary"
    )


def _check_folder(path: str, role: str) -> None:
    problem = model_folder_problem(path)
    if problem:
        raise UserError(f"could not load the {role} model: {problem}")


def _load_failure(what: str, path: str, exc: Exception) -> str:
    if Path(path).exists() or path.startswith(("/", ".", "~")):
        return f"could not load the {what} from the local folder {path}: {type(exc).__name__}: {exc}"
    offline = hub_offline()
    hint = "the hub is offline here (HF_HUB_OFFLINE=1)" if offline else "the hub may be unreachable from this machine"
    return (
        f"could not load the {what} {path!r}: it is not a local folder and {hint}; "
        f"download it elsewhere and pass its local path ({type(exc).__name__}: {exc})"
    )


def describe_placement(model, device: torch.device) -> str:
    """`cuda:0`, or for a model a device_map spreads: `cuda:0 (device_map over 0, 1, cpu)`."""
    spread = sorted(set(map(str, (getattr(model, "hf_device_map", None) or {}).values())))
    return f"{device} (device_map over {', '.join(spread)})" if len(spread) > 1 else str(device)
