"""Reading a user's text file (a recipe, a dataset) as UTF-8, with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from os_cli.errors import UserError


def read_text(path: str | os.PathLike, what: str = "dataset", label: str | None = None) -> str:
    """A file's text; a file that is not UTF-8 is a `UserError` naming it and the byte offset."""
    label = label or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {label}: cannot read the file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {label} is not UTF-8 text: byte offset {exc.start} "
            f"({data[exc.start : exc.start + 4]!r}: {exc.reason}); convert it to UTF-8"
        ) from None
