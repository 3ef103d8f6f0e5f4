"""What a wheel carries: every package, the bundled recipes and the `defaults:` fragments.

The end-to-end test builds a real wheel from a copy of the sources, installs it (no dependencies) into
a fresh virtual environment that borrows this interpreter's site-packages for torch and friends, and
runs `os-sample` from a folder outside the repository, so nothing can come from the source tree.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "os_cli", "optimal_sampling_hf", "recipes", "configs")


def _package_list(root: Path) -> list[str]:
    """setup.py's package list, found from the folders under `root` (setup() itself is not run)."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="setup_under_test")["package_list"](str(root))


def test_every_package_and_data_folder_is_in_the_wheel_list():
    """setup.py finds the packages (recipes/ and configs/ are mapped into os_cli): every code package, every
    folder under os_cli/ holding shipped files (setuptools warns "Package would be ignored" for a data
    folder that is not a listed package) and every subfolder of recipes/ and configs/."""
    listed = set(_package_list(ROOT))
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("os_cli", "optimal_sampling_hf") for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set()
    data = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "os_cli").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")}
    assert {d for d in data if all(part.isidentifier() for part in d.split("."))} - listed == set()
    assert "os_cli.builtin" in listed
    for package, folder in (("os_cli.recipes", "recipes"), ("os_cli.configs", "configs")):
        subs = {".".join((package, *p.relative_to(ROOT / folder).parts))
                for p in (ROOT / folder).rglob("*") if p.is_dir() and p.name != "__pycache__"}
        assert {package} | subs <= listed
    assert "os_cli.configs.alpha" in listed


def test_a_new_subpackage_needs_no_edit(tmp_path):
    """Modules moved into new subpackages (os_cli/mix/, ...) are in the wheel without listing them anywhere."""
    for folder in ("os_cli", "os_cli/mix", "os_cli/mix/inner", "optimal_sampling_hf"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
    for path in ("os_cli/builtin/demo-theta/config.json", "os_cli/__pycache__/x.pyc", "recipes/demo.yaml",
                 "configs/alpha/fixed-half.yaml", "configs/README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert _package_list(tmp_path) == ["optimal_sampling_hf", "os_cli", "os_cli.builtin", "os_cli.configs",
                                       "os_cli.configs.alpha", "os_cli.mix", "os_cli.mix.inner", "os_cli.recipes"]


def _run(args, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_wheel_install_finds_bundled_recipes_and_fragments(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                  str(src)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    for warning in ("is absent from the `packages` configuration", "Package would be ignored"):
        assert warning not in built.stdout + built.stderr, built.stdout + built.stderr
    (wheel,) = dist.glob("os_sample-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                      "--no-index", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    # The dependencies come from this interpreter's site-packages; .pth files there (an editable
    # install of this repository among them) are not processed, so os_cli comes from the wheel only.
    (site,) = (venv / "lib").glob("python*/site-packages")
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "zz_deps.pth").write_text("\n".join(deps) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import os_cli; print(os_cli.__file__)"], cwd=elsewhere)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

    cli = str(venv / "bin" / "os-sample")
    listed = _run([cli, "recipes"], cwd=elsewhere)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in ("demo", "chat", "math-hint", "sampling/default", "models/qwen2.5-1.5b-3b"):
        assert name in listed.stdout
    assert "no bundled recipes" not in listed.stdout

    valid = _run([cli, "validate", "demo"], cwd=elsewhere)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "is a valid recipe" in valid.stdout and str(site / "os_cli" / "recipes" / "demo.yaml") in valid.stdout

    # A recipe of one's own that pulls a shipped fragment (configs/ in the wheel).
    demo = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    demo["defaults"] = ["alpha/fixed-half"]
    del demo["alpha"]
    (elsewhere / "mine.yaml").write_text(yaml.safe_dump(demo))
    mine = _run([cli, "validate", "mine.yaml"], cwd=elsewhere)
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "alpha/fixed-half" in mine.stdout
    assert [line.split()[1] for line in mine.stdout.splitlines() if line.strip().startswith("alpha ")] == ["fixed"]
