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
    try:
        request = parse_request(environ, read_stdin() if stdin is None else stdin)
        handler = handlers.get(request.command)
        if handler is None:
            raise CNIError(INVALID_ENVIRONMENT, f"{request.command} is not supported")
        answer = handler(request)
        if answer is not None:
            out.write(jsonfast.dumps(answer) + "\n")
        out.flush()
        return 0
    except CNIError as err:
        return _report(out, err, request)
    except KeyboardInterrupt:
        return _report(out, CNIError(IO_FAILURE, "interrupted"), request)
    except Exception as err:  # last line of defence: never a traceback on stdout
        _log_unexpected(err)
        detail = f"{type(err).__name__}: {err}"[:300]
        return _report(out, CNIError(IO_FAILURE, f"unexpected failure: {detail}"), request)


def _report(out: Any, err: CNIError, request: Request | None) -> int:
    version = LATEST
    if request is not None:
        asked = request.config.get("cniVersion")
        if isinstance(asked, str) and asked:
            version = asked
    try:
        out.write(jsonfast.dumps(err.to_dict(version)) + "\n")
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
