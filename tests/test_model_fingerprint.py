"""A resume must load the weights the folder's records came from: a relative model name that now
resolves elsewhere, or a folder whose weights were replaced, is refused before any model loads; the
same weights moved to another folder still resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from os_cli.models.fingerprint import CHUNK, SAMPLES_PER_FILE, model_fingerprint

runner = CliRunner()
ROWS = [{"id": f"r{i}", "question": f"What is {i} plus 2?"} for i in range(4)]


def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_follows_the_weights_not_the_path(tmp_path, tiny_models):
    a = _copy(tiny_models["theta"], tmp_path / "a")
    b = _copy(tiny_models["theta"], tmp_path / "b")
    assert model_fingerprint(str(a)) == model_fingerprint(str(b)) is not None
    assert model_fingerprint(str(a)) != model_fingerprint(tiny_models["teacher"])
    assert model_fingerprint("org/some-hub-model") is None and model_fingerprint(None) is None
    # a large weight file is sampled, not read whole: a changed region in its middle still shows
    big = tmp_path / "big"
    big.mkdir()
    size = 4 * SAMPLES_PER_FILE * CHUNK
    (big / "model.safetensors").write_bytes(bytes(size))
    before = model_fingerprint(str(big))
    with (big / "model.safetensors").open("r+b") as f:
        f.seek(size // 2 - 2 * CHUNK)
        f.write(b"\1" * 4 * CHUNK)
    assert model_fingerprint(str(big)) != before


def _project(root: Path, tiny_models) -> Path:
    proj = root / "proj"
    (proj / "models").mkdir(parents=True)
    _copy(tiny_models["theta"], proj / "models" / "th")
    (proj / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = {
        "models": {"theta": "models/th", "teacher": tiny_models["teacher"], "device": "cpu", "dtype": "float32"},
        "sampling": {"max_new_tokens": 3, "batch_size": 2, "seed": 1},
        "dataset": {"source": "data.jsonl", "id_field": "id", "limit": 2},
        "prompts": {"theta": {"template": "{question}"}},
    }
    (proj / "r.yaml").write_text(yaml.safe_dump(recipe))
    return proj


def _generate(cli_app, recipe: Path, out: Path, limit: int):
    return runner.invoke(cli_app, ["generate", "-c", str(recipe), "--output", str(out),
                                   "--set", f"dataset.limit={limit}"])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for s in sorted(out.glob("shard-*.jsonl")) for line in s.read_text().splitlines()]


def test_a_relative_model_that_resolves_elsewhere_is_refused(tmp_path, tiny_models, cli_app, monkeypatch):
    proj = _project(tmp_path, tiny_models)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)  # models/th is not here: it resolves to the recipe's folder
    out = tmp_path / "out"
    first = _generate(cli_app, proj / "r.yaml", out, 2)
    assert first.exit_code == 0, first.output
    written = _records(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["theta"] == str((proj / "models" / "th").resolve())
    assert manifest["model_fingerprints"]["theta"] == model_fingerprint(manifest["models"]["theta"])
    _copy(tiny_models["teacher"], other / "models" / "th")  # now the working directory's models/th wins
    again = _generate(cli_app, proj / "r.yaml", out, 4)
    assert again.exit_code == 2, again.output
    assert "models.theta" in again.output and "another model" in again.output
    assert "Traceback" not in again.output
    assert _records(out) == written  # nothing written, nothing lost


def test_weights_replaced_in_place_are_refused_and_moved_weights_resume(tmp_path, tiny_models, cli_app,
                                                                        monkeypatch):
    proj = _project(tmp_path, tiny_models)
    monkeypatch.chdir(proj)
    out = tmp_path / "out"
    assert _generate(cli_app, proj / "r.yaml", out, 2).exit_code == 0
    weights = sorted((proj / "models" / "th").glob("*.safetensors"))
    saved = tmp_path / "saved"
    shutil.copytree(proj / "models" / "th", saved)
    for w in weights:  # the same folder, other weights
        with w.open("r+b") as f:
            f.seek(w.stat().st_size // 2)
            f.write(b"\x7f" * 64)
    replaced = _generate(cli_app, proj / "r.yaml", out, 4)
    assert replaced.exit_code == 2 and "weights in that folder changed" in replaced.output, replaced.output
    # the original weights, moved to another folder the name now resolves to: same fingerprint, resumes
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    shutil.copytree(saved, elsewhere / "models" / "th")
    monkeypatch.chdir(elsewhere)
    moved = _generate(cli_app, proj / "r.yaml", out, 4)
    assert moved.exit_code == 0, moved.output
    assert sorted(r["id"] for r in _records(out)) == ["r0", "r1", "r2", "r3"]


def test_folders_written_before_fingerprints_compare_locations(tmp_path, tiny_models, cli_app, monkeypatch):
    proj = _project(tmp_path, tiny_models)
    monkeypatch.chdir(proj)
    out = tmp_path / "out"
    assert _generate(cli_app, proj / "r.yaml", out, 2).exit_code == 0
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["model_fingerprints"]
    path.write_text(json.dumps(manifest))
    assert _generate(cli_app, proj / "r.yaml", out, 3).exit_code == 0  # same place: resumes
    manifest = json.loads(path.read_text())
    del manifest["model_fingerprints"]
    manifest["models"]["theta"] = str(tmp_path / "somewhere-else")
    path.write_text(json.dumps(manifest))
    refused = _generate(cli_app, proj / "r.yaml", out, 4)
    assert refused.exit_code == 2 and "another model" in refused.output, refused.output
