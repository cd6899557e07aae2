"""Data planes: bridge mode (our own links and rules) and docker mode.

Also what the ADD paths share, kept here rather than in a module of its own
so that neither ADD path imports a module more for it:

- The test hooks. SMARTER_CNI_TEST_PAUSE_FIFO names a FIFO the plugin opens
  (blocking until the test opens it for writing) and reads to EOF between
  the transaction that records an attachment (not ready) and the one that
  completes it, so a test can run a DEL or GC exactly there;
  SMARTER_CNI_TEST_PAUSE_BEFORE_PLUMB_FIFO does the same right after the
  first transaction, before the pod's links are made. Unset in production:
  one environment lookup each.
- `abandon`: what a resident pool worker runs when it ends mid-ADD because
  its client is gone (resident_request.leave). Unlike a killed plugin's
  process, such a worker may go on for a moment after its client died, while
  the runtime's DEL already runs; what it made after that DEL must not stay.
"""

from __future__ import annotations

import os

PAUSE_ENV = "SMARTER_CNI_TEST_PAUSE_FIFO"
PAUSE_BEFORE_PLUMB_ENV = "SMARTER_CNI_TEST_PAUSE_BEFORE_PLUMB_FIFO"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

# Set by an ADD from its first transaction to its end; called by a worker that ends mid-ADD.
abandon: Callable[[], None] | None = None


def pause_between_phases(env: str = PAUSE_ENV) -> None:
    path = os.environ.get(env)
    if path:
        try:
            with open(path, "rb") as fifo:
                fifo.read()
        except OSError:
            pass
