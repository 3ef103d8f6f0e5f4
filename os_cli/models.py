"""Loading the two models and their tokenizer: names, devices, dtypes, attention and quantization.

Everything goes through `from_pretrained`. Choices the user did not make explicitly (device,
dtype, attention implementation) are logged on the `os_cli` logger, never printed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from .errors import UserError
from .quiet import quiet_loading
from .preflight import attn_problem, model_folder_problem

log = logging.getLogger("os_cli")

BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_PREFIX = "builtin:"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
_QUANT_KEYS = ("load_in_4bit", "load_in_8bit")


def resolve_model_path(name: str) -> str:
    """Map `builtin:NAME` to the model shipped in `os_cli/builtin/NAME`; other names pass through."""
    if not isinstance(name, (str, os.PathLike)) or not str(name):
        raise UserError(f"model path must be a non-empty string, got {name!r}")
    name = str(name)
    if not name.startswith(BUILTIN_PREFIX):
        return name
    target = BUILTIN_DIR / name[len(BUILTIN_PREFIX):]
    if not target.is_dir():
        available = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
        raise UserError(f"unknown builtin model {name!r}; available: {', '.join(available) or 'none'}")
    return str(target)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"device {device!r} is not a valid device (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for CUDA, but torch sees no CUDA device here (use device=auto or cpu)")
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


def pop_quantization_config(kwargs: dict):
    """Turn `load_in_4bit` / `load_in_8bit` / `bnb_*` keyword arguments into a BitsAndBytesConfig."""
    quant = {k: kwargs.pop(k) for k in list(kwargs) if k in _QUANT_KEYS or k.startswith("bnb_")}
    if not any(quant.get(k) for k in _QUANT_KEYS):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("4-bit/8-bit loading needs bitsandbytes: pip install 'os-sample[quant]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**quant)


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


def load_causal_lm(path: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                   role: str = "theta", **kwargs):
    from transformers import AutoModelForCausalLM

    _check_folder(path, role)
    kwargs = dict(kwargs)
    quantization_config = pop_quantization_config(kwargs)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs.setdefault("device_map", {"": device.index or 0} if device.type == "cuda" else None)
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=attn_implementation, **kwargs
            )
    except (OSError, ImportError) as exc:
        raise UserError(_load_failure(f"{role} model", path, exc), exit_code=1) from exc
    if quantization_config is None:
        model.to(device)
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
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = "the hub is offline here (HF_HUB_OFFLINE=1)" if offline else "the hub may be unreachable from this machine"
    return (f"could not load the {what} {path!r}: it is not a local folder and {hint}; "
            f"download it elsewhere and pass its local path ({type(exc).__name__}: {exc})")
