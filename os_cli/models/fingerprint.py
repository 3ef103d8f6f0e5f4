"""Model fingerprint: which weights a folder's records came from, so a resume with other weights is refused.

The recipe hash holds the model names as written (`models/th`, `builtin:demo-theta`, `org/name`), but
a relative name can resolve to another folder from another working directory, and a folder's weights
can be replaced in place. The manifest therefore keeps, per model, where it was loaded from
(`models`) and a fingerprint of that folder (`model_fingerprints`); `check_models` compares both
with what this run would load, before any model loads.

A fingerprint is SHA-256 over the top-level weight and config files of a local folder: each file's
name and size, `config.json` whole, and SAMPLES_PER_FILE chunks of CHUNK bytes at evenly spaced
offsets of each weight file (a whole file when it is smaller). Reading a few MiB per file keeps it
cheap for a 14B model, and a fine-tune or a merged adapter changes bytes nearly everywhere, so 256
samples miss it only if fewer than a few per cent of the bytes changed. A hub name has no folder
here: it is pinned by `models.revision`, which is part of the recipe hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

from os_cli.errors import UserError

SAMPLES_PER_FILE = 256
CHUNK = 16 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
ROLES = ("theta", "teacher")


def model_fingerprint(location: str | None) -> str | None:
    """ "sha256:..." for a local model folder; None for no model or a hub name (no folder here)."""
    if location is None or not Path(location).is_dir():
        return None
    digest = hashlib.sha256()
    files = sorted(
        p for p in Path(location).iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode("utf-8", errors="surrogatepass"))
        with path.open("rb") as f:
            if path.name == "config.json" or size <= SAMPLES_PER_FILE * CHUNK:
                digest.update(f.read())
                continue
            for i in range(SAMPLES_PER_FILE):
                f.seek(i * (size - CHUNK) // (SAMPLES_PER_FILE - 1))
                digest.update(f.read(CHUNK))
    return "sha256:" + digest.hexdigest()


def model_fingerprints(locations: Mapping[str, str | None]) -> dict[str, str | None]:
    """{role: fingerprint} for the manifest, from {role: location}."""
    return {role: model_fingerprint(location) for role, location in locations.items()}


def check_models(out_dir: Path, manifest: Mapping, locations: Mapping[str, str | None]) -> None:
    """Refuse (exit 2) to continue `out_dir` with weights other than those its records came from.

    With fingerprints in the manifest, the same weights moved elsewhere still resume; without them (a
    folder written before fingerprints), the resolved location must be the same."""
    old_locations = manifest.get("models") or {}
    old_prints = manifest.get("model_fingerprints")
    for role in ROLES:
        if role not in locations:
            continue
        new_location, old_location = locations[role], old_locations.get(role)
        if isinstance(old_prints, Mapping) and role in old_prints:
            new_print = model_fingerprint(new_location)
            if old_prints[role] == new_print and (new_print is not None or old_location == new_location):
                continue
            what = "other weights" if old_location == new_location else "another model"
        elif role in old_locations and old_location != new_location:
            what = "another model"
        else:
            continue
        where = (
            f"it resolves to {new_location}" if new_location != old_location else "the weights in that folder changed"
        )
        raise UserError(
            f"{out_dir} was written with models.{role} loaded from {old_location or '(same as theta)'}, but now "
            f"{where}: continuing would mix records of {what} into the folder. Restore the model (or run "
            f"from the working directory the folder was written from), or use --output NEW_DIR (or "
            f"--overwrite to start over)"
        )
