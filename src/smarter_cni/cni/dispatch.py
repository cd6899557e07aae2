"""One entry point: request in, a handler called, result or spec error JSON out.

Handlers never print or exit; everything they raise is turned into an error
here, so no traceback ever reaches a runtime.
"""

from __future__ import annotations

import os
import sys

from . import jsonfast
from .errors import INVALID_ENVIRONMENT, IO_FAILURE, CNIError
from .request import Request, parse_request, read_stdin
from .version import LATEST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

Handler = "Callable[[Request], Optional[Any]]"


def run(
    handlers: Mapping[str, Handler],
    environ: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    out: Any = None,
) -> int:
    """Serve one invocation and return the process exit code."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    request: Request | None = None
    raw = b""
    try:
        raw = read_stdin() if stdin is None else stdin
        request = parse_request(environ, raw)
        handler = handlers.get(request.command)
        if handler is None:
            raise CNIError(INVALID_ENVIRONMENT, f"{request.command} is not supported")
        answer = handler(request)
        if answer is not None:
            out.write(jsonfast.dumps(answer) + "\n")
        out.flush()
        return 0
    except CNIError as err:
        return _report(out, err, _asked_version(request, raw))
    except KeyboardInterrupt:
        return _report(out, CNIError(IO_FAILURE, "interrupted"), _asked_version(request, raw))
    except Exception as err:  # last line of defence: never a traceback on stdout
        _log_unexpected(err)
        detail = f"{type(err).__name__}: {err}"[:300]
        return _report(out, CNIError(IO_FAILURE, f"unexpected failure: {detail}"),
                       _asked_version(request, raw))


def _asked_version(request: Request | None, raw: bytes) -> str:
    """Answer errors in the config's version, even when the request never parsed."""
    config = request.config if request is not None else None
    if config is None:
        try:
            config = jsonfast.loads(raw) if raw.strip() else None
        except (jsonfast.JSONError, RecursionError, ValueError):
            config = None
    asked = config.get("cniVersion") if isinstance(config, dict) else None
    return asked if isinstance(asked, str) and asked and len(asked) < 16 else LATEST


def _report(out: Any, err: CNIError, cni_version: str) -> int:
    try:
        out.write(jsonfast.dumps(err.to_dict(cni_version)) + "\n")
        out.flush()
    except (OSError, ValueError):
        pass
    return 1


def _log_unexpected(err: Exception) -> None:
    """Keep the traceback for the operator in the log, never on stdout."""
    try:
        import traceback

        from ..logs import log

        log("error", "unexpected failure\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    except Exception:
        pass
