"""docs/ARCHITECTURE.md matches the code: its module tree lists every module (and only modules that
exist), the names it gives in the tree import, and its `module.name` references resolve. Also the
structure rules that can be checked mechanically: the layer order of the folders, no import cycles
(imports inside functions count), no `_private` name imported from another module, small modules, short
parameter lists, and the recipe package is data (no torch, no api)."""

from __future__ import annotations

import ast
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


SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


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
    for folder in SUBPACKAGES:
        on_disk |= {f"os_cli.{folder}.{p.stem}" for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"}
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
    modules: dict[str, list[str]] = {}
    for dotted in tree_entries():
        if dotted.startswith("os_cli."):
            modules.setdefault(dotted.split(".")[-1], []).append(dotted)
    classes = _classes()
    checked = 0
    for first, rest in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_.]*)", text):
        owner = None
        if first in modules:  # cli/export.py and report/export.py: the one that has the name
            candidates = [importlib.import_module(d) for d in modules[first]]
            owner = next((m for m in candidates if _has(m, rest.split(".")[0])), candidates[0])
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
            "print(sorted(m for m in ('torch', 'transformers', 'os_cli.api.model', 'os_cli.api.build') if m in sys.modules))")
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


# ------------------------------------------------------------------------------------------------
# The import graph and the shape of the code
# ------------------------------------------------------------------------------------------------

# A folder may import from the folders before it (and from the top-level modules), never after it.
LAYERS = ("mix", "recipe", "models", "store", "prompts", "engine", "api", "report", "bench", "run", "cli")
MAX_FLAT_MODULES = 12
MAX_MODULE_LINES = 450
MAX_PARAMETERS = 10
# Signatures users write against (the usage guide's API) may be long; typer commands take one
# parameter per option. Everything else passes settings objects.
PUBLIC_SIGNATURES = {("os_cli.api.model", "OptimalSamplingModel.__init__"), ("os_cli.api.model", "OptimalSamplingModel.generate"),
                     ("os_cli.api.model", "OptimalSamplingModel.generate_stream")}
MAX_LONG_SIGNATURES = 2


def _module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[dotted.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import in the file, inside functions too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                module = ".".join(base[: len(base) - node.level + 1] + ([module] if module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub, []) if sub in modules else (module, [alias.name]))
    resolved = []
    for module, names in out:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        if module and module != name:
            resolved.append((module, names))
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {name: {m for m, _ in _imports(name, path, modules)} for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_folders_import_only_earlier_layers():
    assert sorted(LAYERS) == sorted(SUBPACKAGES), "every subpackage has its place in LAYERS (and docs/ARCHITECTURE.md)"
    rank = {folder: i for i, folder in enumerate(LAYERS)}
    wrong = []
    for module, targets in _graph().items():
        here = module.split(".")[1] if module.count(".") >= 1 and module.split(".")[1] in rank else None
        for target in targets:
            there = target.split(".")[1] if target.count(".") >= 1 and target.split(".")[1] in rank else None
            if here and there and rank[there] > rank[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports against the layer order " + " < ".join(LAYERS) + ": " + ", ".join(wrong)


def test_no_private_names_across_modules():
    modules = _module_files()
    found = [f"{name} imports {target}.{n}" for name, path in modules.items()
             for target, names in _imports(name, path, modules) for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert found == []


def test_folders_show_the_layers():
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(flat) <= MAX_FLAT_MODULES, sorted(flat)
    assert len(SUBPACKAGES) >= 5
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len([n for n in names if n not in ("self", "cls")])


def _is_typer_command(module: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A command of the CLI: its parameters are typer options and arguments."""
    defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
    return module.startswith("os_cli.cli.") and any(ast.unparse(d).startswith("typer.") for d in defaults)


def test_parameter_lists_stay_short():
    long = []
    for module, path in sorted(_module_files().items()):
        for name, node in _functions(ast.parse(path.read_text())):
            count = _parameters(node)
            if count > MAX_PARAMETERS and (module, name) not in PUBLIC_SIGNATURES and not _is_typer_command(module, node):
                long.append(f"{module}.{name} ({count})")
    assert len(long) <= MAX_LONG_SIGNATURES, long


def test_recipe_is_read_through_attributes():
    """Outside os_cli/recipe/ a recipe is a typed object: no `recipe["..."]` indexing, no `_meta`."""
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py") if "recipe" not in p.relative_to(PACKAGE).parts[:1]
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r'recipe\[\s*["\']|\b_meta\b', line)]
    assert len(hits) <= 3, hits
