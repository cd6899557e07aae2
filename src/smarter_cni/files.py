"""Files that others read, written whole: a temp file in the same directory, renamed into place.

store.save keeps its own (fixed temp name under the state lock, CNI error
codes); everything else written atomically goes through here.
"""

from __future__ import annotations

import os


def write_atomic(path: str, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one rename; raises OSError (and leaves no temp file)."""
    temp = os.path.join(os.path.dirname(path) or ".",
                        f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
