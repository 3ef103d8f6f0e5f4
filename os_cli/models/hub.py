"""The loading arguments a model, its config and its tokenizer share, defined once.

`TOKENIZER_KWARGS` are the `from_pretrained` keyword arguments that concern the tokenizer (and
config.json) as well as the weights; `tokenizer_kwargs` picks them out of a model's keyword
arguments (the API), `recipe_load_kwargs(models)` reads them from a recipe's `models` section (the
CLI), and `load_tokenizers(models, places)` loads theta's and the teacher's tokenizers of a recipe
without any weights (`places`: `recipe.places`, where the models load from).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from os_cli.recipe.typed import Models

TOKENIZER_KWARGS = ("revision", "trust_remote_code", "cache_dir", "token", "local_files_only", "subfolder")


def tokenizer_kwargs(kwargs: Mapping[str, Any]) -> dict:
    """The entries of `from_pretrained` keyword arguments that the tokenizer takes too."""
    return {k: kwargs[k] for k in TOKENIZER_KWARGS if k in kwargs}


def recipe_load_kwargs(models: Models) -> dict:
    """`revision` and `trust_remote_code` of a recipe's `models` section, where set."""
    kwargs: dict = {}
    if models.revision:
        kwargs["revision"] = models.revision
    if models.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def load_tokenizers(models: Models, places) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(theta's tokenizer, the teacher's) of a recipe; one object when the teacher is theta."""
    from os_cli.models.loading import load_tokenizer

    kwargs = recipe_load_kwargs(models)
    theta = places.theta
    tokenizer = load_tokenizer(theta, **kwargs)
    teacher = places.teacher
    tokenizer_t = tokenizer if teacher in (None, theta) else load_tokenizer(teacher, role="teacher", **kwargs)
    return tokenizer, tokenizer_t
