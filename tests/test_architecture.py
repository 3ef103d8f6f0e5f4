"""docs/ARCHITECTURE.md matches the code: its module tree lists every module (and only modules that
exist), the names it gives in the tree import, and its `module.name` references resolve. Also the
layering rules that can be checked mechanically (the recipe package is data: no torch, no api)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = ROOT / "os_cli"
# Words of the tree's descriptions that are not names in the module they describe.
NOT_NAMES = {"os_cli", "API", "CLI", "UTF", "YAML", "SIGINT", "SIGTERM", "JSONL", "HF_HUB_OFFLINE", "OOM", "RSS"}


def _recipe_key_paths() -> set[str]:
    from os_cli.recipe.schema import all_key_paths

    return set(all_key_paths())


RECIPE_KEY_PATHS = _recipe_key_paths()  # `models.theta` is a recipe key, not the module models
RECIPE_KEYS = {part for path in RECIPE_KEY_PATHS for part in path.split(".")}  # messages_field, ...


def tree_block() -> list[str]:
    """The lines of the first fenced block, the module tree under `os_cli/`."""
    text = DOC.read_text()
    start = text.index("```\n") + 4
    return text[start:text.index("```", start)].splitlines()


def tree_entries() -> dict[str, str]:
    """{dotted module or folder: its description} for every `name.py` / `name/` entry of the tree."""
    entries: dict[str, str] = {}
    parents: list[str] = []
    current = None
    for line in tree_block():
        match = re.match(r"^( *)(\S+?\.py|\S+/)(?:\s+(.*))?$", line)
        if not match or (line.startswith(" ") and len(match.group(1)) % 2):
            if current is not None:  # a continuation line of the description
                entries[current] += " " + line.strip()
            continue
        depth = len(match.group(1)) // 2
        if depth > len(parents):  # deeper than a child of the open folder: a description line
            if current is not None:
                entries[current] += " " + line.strip()
            continue
        name = match.group(2)
        parents = parents[:depth]
        parts = parents + [name.rstrip("/").removesuffix(".py")]
        if name.endswith("/"):
            parents = parents + [name.rstrip("/")]
        current = ".".join(parts)
        entries[current] = match.group(3) or ""
    return entries


def test_tree_lists_exactly_the_modules_that_exist():
    entries = tree_entries()
    assert "os_cli" in entries and "optimal_sampling_hf" in entries
    listed = {name for name in entries if name.startswith("os_cli.")}
    on_disk = {f"os_cli.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    on_disk |= {f"os_cli.{p.name}" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    on_disk |= {f"os_cli.recipe.{p.stem}" for p in (PACKAGE / "recipe").glob("*.py") if p.stem != "__init__"}
    assert on_disk - listed == set(), "modules missing from the tree in docs/ARCHITECTURE.md"
    assert listed - on_disk == set(), "the tree in docs/ARCHITECTURE.md lists modules that do not exist"


def test_tree_modules_import_and_the_names_they_list_exist():
    for dotted, description in tree_entries().items():
        if dotted == "os_cli" or dotted == "os_cli.builtin":
            continue
        module = importlib.import_module(dotted)
        # Names written in capitals (constants, classes) or with an underscore, as the tree gives them.
        for name in re.findall(r"\b([A-Z][A-Z0-9_]{2,}|[A-Z][a-z]+[A-Z][A-Za-z]+|[a-z]+_[a-z_]+)\b", description):
            if name in NOT_NAMES or name in RECIPE_KEYS:
                continue
            members = [module] + [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == dotted]
            assert any(_has(m, name) for m in members), f"docs/ARCHITECTURE.md: {dotted} has no {name}"


def _has(obj, name: str) -> bool:
    """An attribute, a field of a dataclass (fields with a default_factory are not class attributes) or
    an attribute a class's methods set (`self.name =`)."""
    if hasattr(obj, name) or name in getattr(obj, "__dataclass_fields__", {}):
        return True
    return inspect.isclass(obj) and re.search(rf"self\.{name}\b[^=\n]*=", inspect.getsource(obj)) is not None


def _classes() -> dict[str, type]:
    out: dict[str, type] = {}
    for dotted in tree_entries():
        if dotted in ("os_cli", "os_cli.builtin"):
            continue
        for name, obj in vars(importlib.import_module(dotted)).items():
            if inspect.isclass(obj) and obj.__module__.startswith("os_cli"):
                out.setdefault(name, obj)
    return out


def test_module_dot_name_references_resolve():
    """Every `module.name` (or `Class.attribute`) the document writes in backticks exists."""
    text = DOC.read_text()
    modules = {d.split(".")[-1]: d for d in tree_entries() if d.startswith("os_cli.")}
    classes = _classes()
    checked = 0
    for first, rest in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_.]*)", text):
        owner = None
        if first in modules:
            owner = importlib.import_module(modules[first])
        elif first in classes:
            owner = classes[first]
        if owner is None or rest in ("py", "json", "jsonl", "txt", "yaml") or f"{first}.{rest}" in RECIPE_KEY_PATHS:
            continue  # file names (manifest.json), recipe keys (sampling.num_samples), torch names
        if rest.endswith("_"):  # `rng.keyed_*`: a family of names
            assert any(n.startswith(rest) for n in dir(owner)), f"docs/ARCHITECTURE.md: no `{first}.{rest}*`"
            checked += 1
            continue
        obj = owner
        for part in rest.split("."):
            assert _has(obj, part), f"docs/ARCHITECTURE.md: `{first}.{rest}` does not exist"
            obj = getattr(obj, part, None)
        checked += 1
    assert checked >= 20  # the document does cite the code


def test_recipe_package_is_data_only():
    """Loading and validating a recipe imports neither torch nor the API."""
    code = ("import sys; from os_cli.recipe import load_recipe, recipe_hash, dump_recipe; "
            "r = load_recipe('demo'); recipe_hash(r); dump_recipe(r); "
            "print(sorted(m for m in ('torch', 'transformers', 'os_cli.api.model', 'os_cli.models.build') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_recipe_package_files_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "recipe").glob("*.py")}
    assert max(sizes.values()) <= 350, sizes


def test_shared_names_have_one_source():
    """The alpha method names, `builtin:` and the HF_HUB_OFFLINE rule are defined once (places.py,
    alpha_names.py) and imported, not copied."""
    import os_cli.mix.alpha as alpha
    import os_cli.prompts.data as data
    import os_cli.models.loading as models
    import os_cli.recipe.places as places
    from os_cli.mix.alpha_names import ALPHA_METHODS
    from os_cli.recipe.prompt_syntax import TEMPLATE_TOKEN
    from os_cli.recipe import SCHEMA

    assert SCHEMA.fields["alpha"].fields["method"].choices is ALPHA_METHODS is alpha.ALPHA_METHODS
    assert models.resolve_model_path is places.resolve_model_path
    assert data.TEMPLATE_TOKEN is TEMPLATE_TOKEN
    copies = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "places.py"
              and ('"builtin:"' in p.read_text() or 'environ.get("HF_HUB_OFFLINE"' in p.read_text())]
    assert copies == []
