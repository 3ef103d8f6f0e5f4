"""A recipe's identity: the hash of the keys that change which records a run writes, the diff of two
recipes over those keys (resume refuses a different recipe), and the YAML dump stored with a run.

Each takes a loaded `Recipe` or a resolved recipe as a plain dict (`Recipe.to_dict()`, what a
manifest stores)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

import yaml

from os_cli.mix.distributions import TOPK_OF_DEFAULT
from os_cli.recipe.typed import Recipe

# Keys that do not change which records a run writes, so they may change between a run and its
# resume: names and places, hardware placement, grouping (batch size: OOM back-off changes it anyway),
# shard rotation, the bad-row policy, the row limit (a larger limit extends the run) and the number
# of samples per row (a sample's seed does not depend on it, so a larger n extends the run too; records
# with a sample index beyond a smaller n are refused like rows beyond a smaller limit), and
# models.compile (the same tokens, like batch_size: only float rounding of the logits differs).
HASH_EXCLUDED = (
    "description",
    "defaults",
    "run_name",
    "output.dir",
    "output.shard_size",
    "dataset.limit",
    "sampling.batch_size",
    "prompts.on_bad_row",
    "sampling.num_samples",
    "models.compile",
) + tuple(
    f"models.{where}{key}"
    for where in ("", "per_model.theta.", "per_model.teacher.")
    for key in ("device", "device_map", "max_memory")
)


# Keys added after output folders already existed: left out of the hash while unset (the default;
# for a section, its null keys), so folders written before them still resume.
HASH_IF_SET = {
    "models.quant_type": "nf4",
    "models.compute_dtype": "auto",
    "models.per_model.theta": None,
    "models.per_model.teacher": None,
    "models.per_model": None,
    "prompts.theta.messages_field": None,
    "prompts.teacher.messages_field": None,
    "sampling.draft_tokens": 0,
    "output.topk_logprobs": 0,
    "output.topk_of": list(TOPK_OF_DEFAULT),
}


def _plain(recipe: Recipe | Mapping) -> dict:
    """The recipe as a plain dict (a new one)."""
    return recipe.to_dict() if isinstance(recipe, Recipe) else copy.deepcopy(dict(recipe))


def _strip(recipe: Recipe | Mapping) -> dict:
    out = _plain(recipe)
    for key in HASH_EXCLUDED:
        parts = key.split(".")
        node: object = out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    for key, default in HASH_IF_SET.items():  # in order: a section left empty goes too
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            continue
        if isinstance(node[last], dict):  # a section: its unset (null) keys go, then the section if empty
            node[last] = {k: v for k, v in node[last].items() if v is not None}
            if not node[last]:
                node.pop(last)
        elif node[last] == default:
            node.pop(last)
    return out


def recipe_hash(recipe: Recipe | Mapping) -> str:
    """`sha256:<hex>` over the keys that change which records a run writes (see HASH_EXCLUDED)."""
    text = json.dumps(_strip(recipe), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def recipe_diff(old: Recipe | Mapping, new: Recipe | Mapping) -> list[tuple[str, Any, Any]]:
    """The hashed key paths whose values differ between two resolved recipes, with their effective values:
    a HASH_IF_SET key left out of the hash (at its default, or absent from an older recipe) shows its default."""
    a, b = _flatten(_strip(old)), _flatten(_strip(new))
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, HASH_IF_SET.get(key)), b.get(key, HASH_IF_SET.get(key))
        if va != vb:
            out.append((key, va, vb))
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (templates) as `|` blocks, so a dumped recipe reads like the one written."""


def _str_representer(dumper, value: str):
    if "\n" in value and not value.endswith((" ", "\t")) and "\n " not in value.rstrip("\n"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def dump_recipe(recipe: Recipe | Mapping) -> str:
    """The resolved recipe as YAML, in schema order (a `Recipe` without its places and source)."""
    return yaml.dump(_plain(recipe), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
