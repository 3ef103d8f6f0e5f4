"""Ctrl-C at any point of `os-sample`: exit 130, one "interrupted" line, no traceback (README: exit codes).

A real SIGINT reaches a real `os-sample` process (pyproject's console script, os_cli/entry.py) while a chosen module
is being imported: an import hook sends it as the import starts, so the test hits the same spot every time
(a timer would race the machine's load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    target, convert = sys.argv[1].split("!")[0], sys.argv[1].endswith("!")

    class Interrupt:
        def find_spec(self, name, path=None, target_module=None):
            if name == target:
                sys.meta_path.remove(self)
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)  # the handler raises here
                except KeyboardInterrupt as exc:
                    if convert:  # a library that reports an interrupted import as a failed one
                        raise ImportError(f"{name} could not be imported") from exc
                    raise
            return None

    sys.meta_path.insert(0, Interrupt())
    module, function = sys.argv[2].split(":")
    sys.argv = ["os-sample"] + sys.argv[3:]
    import importlib
    sys.exit(getattr(importlib.import_module(module), function)())
""")
ROOT = Path(__file__).resolve().parents[1]


def console_script() -> str:
    """`module:function` of the os-sample script, as pyproject declares it."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["os-sample"]


def run_interrupted(module: str, *args) -> subprocess.CompletedProcess:
    """Run os-sample with `args`, Ctrl-C as `module` starts to import; `module!`: the importer turns the
    KeyboardInterrupt into an ImportError, as libraries with lazy imports (transformers) can."""
    return subprocess.run([sys.executable, "-c", DRIVER, module, console_script(), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_python_m_os_cli_runs_the_console_script():
    main = (ROOT / "os_cli" / "__main__.py").read_text()
    module, function = console_script().split(":")
    assert f"from {module} import {function}" in main


@pytest.mark.parametrize("module", ["typer", "rich.console", "os_cli.cli.generate"])
def test_ctrl_c_while_the_cli_imports_exits_130_without_a_trace(module, tmp_path):
    proc = run_interrupted(module, "generate", "--config", tmp_path / "absent.yaml", "--output", tmp_path / "out")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted", proc.stderr


def test_ctrl_c_while_a_model_loads_says_interrupted_not_could_not_load(tmp_path, tiny_models):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": i, "q": f"What is {i} plus 3?"}) + "\n" for i in range(2)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "models": {"theta": tiny_models["theta"], "teacher": tiny_models["teacher"], "device": "cpu"},
        "sampling": {"max_new_tokens": 3, "seed": 1}, "dataset": {"source": str(data), "id_field": "id"},
        "prompts": {"theta": {"template": "{q}", "chat_template": False}}}))
    out = tmp_path / "out"
    # transformers imports the model's module when from_pretrained runs (after the folder is set up)
    for module in ("transformers.models.qwen2.modeling_qwen2", "transformers.models.qwen2.modeling_qwen2!"):
        proc = run_interrupted(module, "generate", "--config", recipe, "--output", out)
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "error: interrupted", proc.stderr
        assert "could not load" not in proc.stderr and "Traceback" not in proc.stderr
        assert "loading models" in proc.stdout + proc.stderr  # it was interrupted where the test meant it to be
