"""The user documentation stays true: links resolve, every recipe key is documented, the README stays
short and points to the docs pages, and its quick start is the Makefile's.

Plain text checks, no models: the helpers take text so the tests below can show they fail on a
broken link or a missing key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RECIPES_PAGE = DOCS / "recipes.md"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.M)


def doc_files() -> list[Path]:
    files = [README, *sorted(DOCS.glob("*.md"))]
    changelog = ROOT / "CHANGELOG.md"
    return files + ([changelog] if changelog.exists() else [])


def _prose(text: str) -> str:
    """Text without fenced code blocks and code spans (a `[x](y)` inside code is not a link)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than - and _
    removed, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def relative_links(text: str) -> list[str]:
    return [t for t in _LINK.findall(_prose(text)) if not re.match(r"[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def broken_links(path: Path, text: str) -> list[str]:
    """The relative links of `text` (the contents of `path`) whose file or #anchor does not exist."""
    problems = []
    for target in relative_links(text):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if file_part and not dest.exists():
            problems.append(f"{path.name}: {target} (no file {dest})")
            continue
        if anchor and dest.suffix == ".md":
            dest_text = text if dest == path else dest.read_text(encoding="utf-8")
            if anchor not in anchors(dest_text):
                problems.append(f"{path.name}: {target} (no heading #{anchor} in {dest.name})")
    return problems


def recipe_key_paths() -> list[str]:
    """Every key path of the recipe schema (sections included), walked from os_cli.recipe.SCHEMA."""
    from os_cli.recipe import SCHEMA, Section

    def walk(section, prefix: tuple) -> list[str]:
        out = []
        for key, sub in section.fields.items():
            path = prefix + (key,)
            out.append(".".join(path))
            if isinstance(sub, Section):
                out += walk(sub, path)
        return out

    return walk(SCHEMA, ())


def undocumented_keys(page: str, keys: list[str]) -> list[str]:
    """The keys that do not appear in backticks, as `key.path`, anywhere in `page`."""
    documented = set(re.findall(r"`([^`\n]+)`", page))
    return [k for k in keys if k not in documented]


def docs_pages_linked(text: str) -> set[str]:
    files = {t.partition("#")[0] for t in relative_links(text)}
    return {f for f in files if re.fullmatch(r"docs/[^/]+\.md", f)}


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path, path.read_text(encoding="utf-8")) == []


def test_link_check_catches_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    good = "# Title\n\n[ok](other.md) [ok](other.md#a-section) [ok](#title) [web](https://example.com)\n"
    assert broken_links(page, good) == []
    assert len(broken_links(page, good + "[gone](missing.md)\n")) == 1
    assert len(broken_links(page, good + "[gone](other.md#no-such-section)\n")) == 1
    assert len(broken_links(page, good + "[gone](#nowhere)\n")) == 1
    assert broken_links(page, good + "```\n[code](missing.md)\n```\n`[span](missing.md)`\n") == []


def test_slugs_follow_github():
    assert slug("Invalid lines and --repair") == "invalid-lines-and---repair"
    assert slug("`generate` through the refill loop (CLI, end to end)") == (
        "generate-through-the-refill-loop-cli-end-to-end")
    assert anchors("# A\n## A\n") == {"a", "a-1"}


def test_every_recipe_key_is_in_the_recipes_page():
    keys = recipe_key_paths()
    assert "models.per_model.teacher.quant_type" in keys and "output.topk_of" in keys  # the walk reaches leaves
    assert undocumented_keys(RECIPES_PAGE.read_text(encoding="utf-8"), keys) == []


def test_key_check_catches_a_missing_key():
    keys = recipe_key_paths()
    page = RECIPES_PAGE.read_text(encoding="utf-8")
    assert undocumented_keys(page.replace("`sampling.draft_tokens`", "sampling.draft_tokens"), keys) == [
        "sampling.draft_tokens"]


def documented_defaults(page: str) -> dict[str, str]:
    """{key path: default cell} of the rows (| `key.path` | default | ... |) of the page's "Key reference"."""
    reference = page.split("\n## Key reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_.]+)` \| ([^|]*) \|", reference, flags=re.M)
    return {key: cell.replace("`", "").replace("*", "").strip() for key, cell in rows}


def default_problems(page: str) -> list[str]:
    """Rows whose default cell is not the schema's default (sections' cells must be empty)."""
    from os_cli.recipe import SCHEMA, Section

    problems = []
    for key, cell in documented_defaults(page).items():
        spec = SCHEMA
        for part in key.split("."):
            spec = spec.fields[part] if isinstance(spec, Section) and part in spec.fields else None
        if spec is None:
            problems.append(f"{key}: not a recipe key")
        elif isinstance(spec, Section):
            expected = "null" if spec.default_null else ""  # prompts.teacher: null unless given
            if cell != expected:
                problems.append(f"{key}: section default {expected or 'none'}, the page says {cell!r}")
        elif spec.required:
            if cell != "required":
                problems.append(f"{key}: required, the page says {cell!r}")
        elif not _same_default(cell, spec.default):
            problems.append(f"{key}: default {spec.default!r}, the page says {cell!r}")
    return problems


def _same_default(cell: str, default) -> bool:
    if default is None or isinstance(default, bool):
        return cell == {None: "null", True: "true", False: "false"}[default]
    if isinstance(default, (int, float)):
        try:
            return float(cell) == default
        except ValueError:
            return False
    if isinstance(default, list):
        return cell == "[" + ", ".join(map(str, default)) + "]"
    return cell == str(default)


def test_recipe_defaults_on_the_page_are_the_schema_defaults():
    page = RECIPES_PAGE.read_text(encoding="utf-8")
    assert len(documented_defaults(page)) > 50
    assert default_problems(page) == []


def test_default_check_catches_a_wrong_default():
    page = RECIPES_PAGE.read_text(encoding="utf-8")
    wrong = page.replace("| `sampling.batch_size` | 8 |", "| `sampling.batch_size` | 16 |")
    assert wrong != page
    assert default_problems(wrong) == ["sampling.batch_size: default 8, the page says '16'"]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_the_docs_pages():
    linked = docs_pages_linked(README.read_text(encoding="utf-8"))
    assert len(linked) >= 4, linked
    for name in ("recipes.md", "outputs.md", "python-api.md", "scaling.md", "alpha-methods.md", "cli.md"):
        assert f"docs/{name}" in linked


def test_readme_quick_start_is_the_makefile():
    """`make demo` and `make test` are Makefile targets, the README shows both in one code block, and
    .ci/run runs the README's test command."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert "make demo\nmake test\n" in blocks
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), flags=re.M)
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in README.read_text(encoding="utf-8")
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in makefile


def test_commands_table_names_every_command():
    """Each command `os-sample --help` lists has a row in the README's command table."""
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    shown = subprocess.run([sys.executable, "-m", "os_cli", "--help"], capture_output=True, text=True, env=env,
                           timeout=120, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    names = set(re.findall(r"^\W+([a-z][a-z-]+)\s{2,}\S", shown.stdout.split("Commands", 1)[1], flags=re.M))
    assert names >= {"generate", "validate", "recipes", "inspect", "bench", "export"}, names
    readme = README.read_text(encoding="utf-8")
    for name in names:
        assert f"| `os-sample {name}" in readme, f"the README's command table lacks {name}"


def test_plot_hint_matches_the_docs():
    from os_cli.cli.plot import PLOT_HINT

    assert PLOT_HINT == "pip install -e '.[plot]'"
    for page in (README, DOCS / "cli.md"):
        assert PLOT_HINT in page.read_text(encoding="utf-8"), page.name


RUNNABLE_PAGES = (README, DOCS / "python-api.md")


def runnable_examples(text: str) -> list[str]:
    """The page's Python examples that construct a model, with the built-in demo pair for the hub
    models and the CPU for CUDA (examples that need bitsandbytes or several GPUs are left out)."""
    out = []
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if "OptimalSamplingModel(" not in block or "load_in_4bit" in block:
            continue
        block = block.replace('"Qwen/Qwen2.5-1.5B-Instruct"', '"builtin:demo-theta"')
        block = block.replace('"Qwen/Qwen2.5-3B-Instruct"', '"builtin:demo-teacher"')
        out.append(block.replace('device="cuda"', 'device="cpu"').replace("torch.bfloat16", "torch.float32"))
    return out


@pytest.mark.parametrize("path", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(path, capsys):
    examples = runnable_examples(path.read_text(encoding="utf-8"))
    assert examples, f"{path.name} has no runnable example"
    for code in examples:
        exec(compile(code, str(path), "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip() and not re.search(r"\bnan\b", printed), printed  # averages over real tokens only
