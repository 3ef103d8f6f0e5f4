"""The recipe schema: every key, its type, default and allowed values (docs/ARCHITECTURE.md,
"Recipe schema"). Data only; `checks.py` holds the checker each `Field.kind` names."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from os_cli.limits import MAX_BATCH_SIZE, MAX_DRAFT_TOKENS, MAX_NEW_TOKENS, MAX_NUM_SAMPLES, MAX_SEED, MIN_TEMPERATURE
from os_cli.mix.alpha_names import ALPHA_METHODS
from os_cli.mix.distributions import DISTRIBUTIONS as LOGPROB_KEYS
from os_cli.mix.distributions import TOPK_OF_DEFAULT

if TYPE_CHECKING:
    from os_cli.recipe.typed import Models


@dataclass(frozen=True)
class Field:
    """One leaf of the schema. `kind` names the checker in `CHECKERS`."""

    kind: str
    default: Any = None
    nullable: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    required: bool = False
    note: str = ""  # appended to a range error (why the bound exists)
    allowed: str = ""  # how the error message describes what is allowed, when the kind's default is not enough


@dataclass(frozen=True)
class Section:
    """A mapping of named fields. `nullable` sections may be null (prompts.teacher)."""

    fields: dict
    nullable: bool = False
    required: bool = False
    default_null: bool = False


def _prompt_section(**kw) -> Section:
    return Section(
        {
            "system": Field("str", None, nullable=True),
            # required unless messages_field is set (then it is appended to the last user turn): cross_checks
            "template": Field("template", None, nullable=True),
            "chat_template": Field("bool", True),
            "messages_field": Field("str", None, nullable=True),
        },
        **kw,
    )


_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# models.compile / OptimalSamplingModel(compile=...): off, fixed slots with a compiled decode step, or
# fixed slots with the eager step (to tell a compiler problem from a slot problem).
COMPILE_CHOICES = (False, True, "static")


# The keys that place and load one model: under `models:` they are both models' defaults; under
# `models.per_model.theta|teacher:` (null = the default) they override one model.
PLACEMENT_KEYS = ("device", "device_map", "max_memory", "dtype", "quantization", "quant_type", "compute_dtype")


def _placement_fields(defaults: bool) -> dict:
    fields = {
        "dtype": Field("choice", "auto", choices=_DTYPE_CHOICES),
        "device": Field("device", "auto", allowed="auto, cpu, cuda or cuda:N"),
        "device_map": Field("device_map", None, nullable=True),
        "max_memory": Field("max_memory", None, nullable=True),
        "quantization": Field("choice", "none", choices=("none", "4bit", "8bit")),
        "quant_type": Field("choice", "nf4", choices=("nf4", "fp4")),
        "compute_dtype": Field("choice", "auto", choices=_DTYPE_CHOICES),
    }
    if defaults:
        return fields
    return {k: Field(f.kind, None, nullable=True, choices=f.choices, allowed=f.allowed) for k, f in fields.items()}


SCHEMA = Section(
    {
        "description": Field("str", None, nullable=True),
        "defaults": Field("str_list", []),
        "run_name": Field("name", None, nullable=True),
        "models": Section(
            {
                "theta": Field("model", required=True),
                "teacher": Field("model", None, nullable=True),
                **_placement_fields(defaults=True),
                "per_model": Section(
                    {
                        "theta": Section(_placement_fields(defaults=False)),
                        "teacher": Section(_placement_fields(defaults=False)),
                    }
                ),
                "attn_implementation": Field("choice", "auto", choices=("auto", "sdpa", "eager", "flash_attention_2")),
                "revision": Field("str", None, nullable=True),
                "trust_remote_code": Field("bool", False),
                # fixed-slot KV cache + compiled decode step (static_stream.py); static: the slots, no compiling
                "compile": Field("compile", False, choices=COMPILE_CHOICES),
            },
            required=True,
        ),
        "alpha": Section(
            {
                "method": Field("choice", "kl_symmetry", choices=ALPHA_METHODS),
                "fixed": Field("float", 0.5, min=0.0, max=1.0),
                "min": Field("float", 0.5, min=0.0, max=1.0),
                "max": Field("float", 1.0, min=0.0, max=1.0),
            }
        ),
        "constraints": Section(
            {
                "to_target": Field("bool", False),
                "top_k": Field("top_k", -1),
                "top_p": Field("float", 1.0, min=0.0, max=1.0, min_open=True),
                "force_first_token": Field("bool", False),
                "force_special_tokens": Field("bool", False),
            }
        ),
        "sampling": Section(
            {
                "max_new_tokens": Field("int", 256, min=1, max=MAX_NEW_TOKENS),
                "temperature": Field(
                    "float",
                    1.0,
                    min=MIN_TEMPERATURE,
                    note="; the bound keeps logits / temperature finite (temperature 0 / greedy is not supported)",
                ),
                "top_p": Field("float", 1.0, min=0.0, max=1.0, min_open=True),
                "top_k": Field("top_k", -1),
                "batch_size": Field("int", 8, min=1, max=MAX_BATCH_SIZE),
                "seed": Field("int", 0, min=0, max=MAX_SEED),
                "num_samples": Field("int", 1, min=1, max=MAX_NUM_SAMPLES),
                "stop": Field("str_list", []),
                "draft_tokens": Field(
                    "draft_tokens",
                    0,
                    min=0,
                    max=MAX_DRAFT_TOKENS,
                    note="; a round runs k + 1 theta forwards and late drafts are rarely accepted, so a larger k only "
                    "costs time (0 = off)",
                ),
            }
        ),
        "dataset": Section(
            {
                "source": Field("source", None, nullable=True),
                "inline": Field("rows", None, nullable=True),
                "split": Field("str", "train"),
                "config": Field("str", None, nullable=True),
                "limit": Field("int", None, nullable=True, min=0),
                "skip": Field("int", 0, min=0),
                "id_field": Field("str", None, nullable=True),
                "keep_fields": Field("keep_fields", "all"),
                "answer_field": Field("str", "answer", nullable=True),
            }
        ),
        "prompts": Section(
            {
                "theta": _prompt_section(required=True),
                "teacher": _prompt_section(nullable=True, default_null=True),
                "on_bad_row": Field("choice", "error", choices=("error", "skip")),
            },
            required=True,
        ),
        "output": Section(
            {
                "dir": Field("str", None, nullable=True),
                "shard_size": Field("int", 1000, min=1),
                "per_token": Field("bool", False),
                # the teacher's top-K per token (os_cli/topk.py); K <= the vocabulary, checked with the tokenizer
                "topk_logprobs": Field("int", 0, min=0),
                "topk_of": Field("choice_list", list(TOPK_OF_DEFAULT), choices=LOGPROB_KEYS),
            }
        ),
    }
)


def all_key_paths(schema: Section = SCHEMA, prefix: tuple = ()) -> list[str]:
    out = []
    for key, sub in schema.fields.items():
        out.append(".".join(prefix + (key,)))
        if isinstance(sub, Section):
            out += all_key_paths(sub, prefix + (key,))
    return out


def spec_at(key: str):
    schema: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(schema, Section) or part not in schema.fields:
            return None
        schema = schema.fields[part]
    return schema


def suggest(word: str, options: Iterable[str]) -> str:
    matches = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def model_settings(models: Models, role: str) -> dict:
    """One model's effective placement keys (`PLACEMENT_KEYS`) of a recipe's `models` section, as
    {key: (value, key path that set it)}: `models.per_model.<role>.<key>` where set (not null), else
    `models.<key>`."""
    own = getattr(models.per_model, role)
    out = {}
    for key in PLACEMENT_KEYS:
        if getattr(own, key) is not None:
            out[key] = (getattr(own, key), f"models.per_model.{role}.{key}")
        else:
            out[key] = (getattr(models, key), f"models.{key}")
    # A device_map under per_model wins over the shared device, a device under per_model over the shared map.
    if own.device is not None and own.device_map is None:
        out["device_map"] = (None, f"models.per_model.{role}.device_map")
        if own.max_memory is None:
            out["max_memory"] = (None, f"models.per_model.{role}.max_memory")
    return out
