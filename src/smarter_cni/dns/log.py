"""The DNS service's logger: one line per message on stderr (journald adds the time).

Not `logging`: with what it imports (threading, traceback, string, ...) it
costs ~1.3 MB of resident memory, a tenth of the whole service. The
interface is the subset the service uses (`log.info("x %s", y)`). Modules
outside the service that do use `logging` (dns.address) are routed here by
`route_std_logging()`.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}


class Log:
    def __init__(self) -> None:
        self.level = INFO
        self.stream: Any = None  # None: sys.stderr as it is when writing

    def emit(self, level: int, msg: str, args: tuple, exc_info: Any = None) -> None:
        if level < self.level:
            return
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        if exc_info is not None and level >= self.level:
            err = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
            if err is not None:
                import traceback  # only here: rare, and worth the memory then

                text += "\n" + "".join(traceback.format_exception(type(err), err,
                                                                  err.__traceback__))
        stream = self.stream or sys.stderr
        try:
            stream.write(f"{NAMES.get(level, level)} {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        if self.level <= DEBUG:
            self.emit(DEBUG, msg, args, exc_info)

    def info(self, msg: str, *args: Any) -> None:
        self.emit(INFO, msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self.emit(WARNING, msg, args)

    def error(self, msg: str, *args: Any) -> None:
        self.emit(ERROR, msg, args)


log = Log()


def route_std_logging(name: str = "smarter-cni.dns") -> None:
    """Send the `logging` records of logger `name` here, if `logging` is loaded at all."""
    std = sys.modules.get("logging")
    if std is None:
        return

    class Handler(std.Handler):  # type: ignore[name-defined,misc]
        def emit(self, record: Any) -> None:
            log.emit(record.levelno, record.getMessage(), ())

    logger = std.getLogger(name)
    logger.handlers[:] = [Handler()]
    logger.setLevel(log.level)
    logger.propagate = False
