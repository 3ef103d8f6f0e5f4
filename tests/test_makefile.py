"""The Makefile's torch install: PyPI's default build unless TORCH_INDEX names a wheel index.

`make -n -B` prints the commands setup would run and runs none of them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _setup_commands(*variables: str) -> list[str]:
    proc = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), ".venv/.installed", *variables],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [" ".join(line.split()) for line in proc.stdout.splitlines() if "install" in line and "torch" in line]


def test_default_installs_the_pinned_torch_from_the_configured_index():
    (line,) = _setup_commands()
    assert line.endswith('pip install -q "torch==2.13.0"'), line
    assert "--index-url" not in line
    assert line.startswith('.venv/bin/python -c "import torch"'), "a torch already in .venv is kept"


def test_torch_index_selects_the_cpu_wheels():
    (line,) = _setup_commands(f"TORCH_INDEX={CPU_INDEX}")
    assert f'pip install -q --index-url {CPU_INDEX} "torch==2.13.0"' in line


def test_torch_spec_can_change_the_version():
    (line,) = _setup_commands("TORCH_SPEC=torch==2.9.1", f"TORCH_INDEX={CPU_INDEX}")
    assert line.endswith(f'--index-url {CPU_INDEX} "torch==2.9.1"'), line
