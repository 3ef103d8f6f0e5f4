"""Stop signals for `generate`: SIGINT/SIGTERM end a run cleanly between writes, and within a few
seconds even when a model call holds the main thread."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

from os_cli.interrupts import EXIT_INTERRUPTED

STOP_GRACE_S = 3.0  # after a stop signal, how long a model call may hold the main thread before a hard exit


class StopSignals:
    """SIGINT/SIGTERM raise KeyboardInterrupt, except while records are being written: then that write finishes first.

    Python runs signal handlers only between bytecodes, so a long model call (a prefill, a CUDA sync)
    would hold the signal until it returns. A watchdog thread, woken by the signal itself through
    `signal.set_wakeup_fd`, ends the process (exit 130) when the main thread has not stopped within
    STOP_GRACE_S and is not writing records: like a kill -9 at that point, the folder stays resumable
    (files are replaced whole, the rows in flight are redone on resume).
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.deferring = False
        self._old: dict = {}
        self._old_fd: int | None = None
        self._write_fd: int | None = None
        self._done = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self._old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read_fd)
            os.close(write_fd)
            return
        self._write_fd = write_fd
        threading.Thread(target=self._watch, args=(read_fd,), name="os-sample-stop", daemon=True).start()

    def restore(self) -> None:
        self._done.set()
        if self._write_fd is not None:
            signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
            os.close(self._write_fd)  # the watchdog reads end-of-file and leaves
            self._write_fd = None
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def _watch(self, read_fd: int) -> None:
        stops = {int(signal.SIGINT), int(signal.SIGTERM)}
        try:
            while True:
                data = os.read(read_fd, 64)
                if not data or self._done.is_set():
                    return
                if stops.isdisjoint(data):
                    continue
                deadline = time.monotonic() + STOP_GRACE_S
                while not self._done.wait(0.1):
                    if self.deferring:  # records are being written: let it finish
                        deadline = time.monotonic() + STOP_GRACE_S
                    elif time.monotonic() >= deadline:
                        os.write(
                            2,
                            (
                                b"\nstopped by a signal while the models were busy; exiting now "
                                b"(the rows in flight are redone when the same command is rerun)\n"
                            ),
                        )
                        os._exit(EXIT_INTERRUPTED)
                return
        finally:
            os.close(read_fd)

    def _handle(self, signum, frame) -> None:
        self.pending = signum
        if not self.deferring:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            raise KeyboardInterrupt
