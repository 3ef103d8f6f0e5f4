"""os_cli.memory: the one RSS reading (bench and the generate dashboard both use it)."""

from __future__ import annotations

import sys

import pytest

from os_cli import memory

from os_cli.cli import dashboard


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS is Linux's /proc/self/status")
def test_rss_follows_touched_memory_and_the_dashboard_shows_it():
    before = memory.rss_bytes()
    assert before > 0 and memory.proc_status_kb("VmRSS") is not None
    block = bytearray(96 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch the pages
    assert memory.rss_bytes() - before > 64 * 2**20
    assert memory.proc_status_kb("VmHWM") * 1024 >= memory.rss_bytes() - 2**20
    del block
    shown = dashboard.memory_usage()  # no CUDA initialised here: the RSS line
    assert shown.startswith("RSS ") and shown.endswith(" MiB") and int(shown.split()[1]) > 0
