"""The usage guide's Python snippets run unchanged, with local tiny models in place of hub names.

Snippets that need a GPU or bitsandbytes (device="cuda", 4-bit loading) and signature listings
are left out; everything else runs in order in one namespace, as a reader would run them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "USAGE.md"
NEEDS_GPU_OR_NOT_CODE = ("cuda", "load_in_4bit", ": str", "(...)", "List[str]")


def runnable_snippets(text: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if not any(marker in b for marker in NEEDS_GPU_OR_NOT_CODE)]


@pytest.mark.skipif(not GUIDE.exists(), reason="the usage guide lives in ../shared/seed beside the repository")
def test_usage_guide_snippets_run_unchanged(tiny_models, tmp_path, monkeypatch, capsys):
    snippets = runnable_snippets(GUIDE.read_text())
    assert len(snippets) >= 5, "the guide's runnable examples were not found"
    monkeypatch.chdir(tmp_path)  # Example 2 writes outputs.jsonl to the working directory
    namespace: dict = {}
    for code in snippets:
        code = code.replace("Qwen/Qwen2.5-1.5B-Instruct", tiny_models["theta"])
        code = code.replace("Qwen/Qwen2.5-3B-Instruct", tiny_models["teacher"])
        exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102 - the guide is the test input
    printed = capsys.readouterr().out
    assert "Average α" in printed and "KL(q||π_θ)" in printed
    lines = (tmp_path / "outputs.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert type(namespace["outputs"]).__name__ == "SamplingOutput"
