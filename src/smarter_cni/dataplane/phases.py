"""The test hook between an ADD's two store transactions (docker mode; bridge.py has its own).

Tests only: SMARTER_CNI_TEST_PAUSE_FIFO names a FIFO the plugin opens
(blocking until the test opens it for writing) and reads to EOF between the
transaction that records an attachment (not ready) and the one that
completes it, so a test can run a DEL or GC exactly there. Unset in
production: one environment lookup.
"""

from __future__ import annotations

import os

PAUSE_ENV = "SMARTER_CNI_TEST_PAUSE_FIFO"  # the same name bridge.PAUSE_ENV uses


def pause_between_phases() -> None:
    path = os.environ.get(PAUSE_ENV)
    if path:
        try:
            with open(path, "rb") as fifo:
                fifo.read()
        except OSError:
            pass
