"""One place that silences the progress bars of transformers and datasets.

`quiet_loading()` wraps every `from_pretrained` of a model (os_cli.models.loading), so the Python API,
`os-sample generate` and `os-sample bench` load models without transformers' "Loading weights"
bar, and a library user's own setting is restored afterwards. `quiet_progress_bars()` is for the
command line, which owns the console: it switches the bars of datasets and transformers off for
the rest of the process (the dashboard is the progress display).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Transformers' progress bars off inside the block, the caller's setting restored after it."""
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # noqa: BLE001 - without transformers there is nothing to silence
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def quiet_progress_bars() -> None:
    """For the CLI: the per-file bars of datasets and transformers off for the whole process."""
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass
