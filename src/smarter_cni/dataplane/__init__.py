"""Data planes: bridge mode (our own links and rules) and docker mode.

Also the one test hook both data planes share, kept here rather than in a
module of its own so that neither ADD path imports a module more for it:
SMARTER_CNI_TEST_PAUSE_FIFO names a FIFO the plugin opens (blocking until
the test opens it for writing) and reads to EOF between the transaction
that records an attachment (not ready) and the one that completes it, so a
test can run a DEL or GC exactly there. Unset in production: one
environment lookup.
"""

from __future__ import annotations

import os

PAUSE_ENV = "SMARTER_CNI_TEST_PAUSE_FIFO"


def pause_between_phases() -> None:
    path = os.environ.get(PAUSE_ENV)
    if path:
        try:
            with open(path, "rb") as fifo:
                fifo.read()
        except OSError:
            pass
