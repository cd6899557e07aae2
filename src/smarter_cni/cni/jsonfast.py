"""JSON without importing the `json` package.

`import json` pulls in `re`, `enum` and `functools`, about 10 ms of the
plugin's start-up on a small board. The C accelerator `_json` that `json`
itself uses does the real work; this module only wires it up.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any



class JSONError(ValueError):
    """Raised for text that is not one JSON document."""


def _reject_constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


class _ScannerContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)
    memo: dict = {}


_scan = _json.make_scanner(_ScannerContext())
_WHITESPACE = " \t\n\r"
_compact = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)
_spaced = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
)


def loads(text: str | bytes) -> Any:
    """Parse exactly one JSON document; raise JSONError naming the position."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONError(f"not UTF-8 at byte {err.start}") from None
    end = len(text)
    pos = 0
    while pos < end and text[pos] in _WHITESPACE:
        pos += 1
    if pos == end:
        raise JSONError("empty input")
    try:
        value, pos = _scan(text, pos)
    except StopIteration as err:
        raise JSONError(f"no JSON value at character {err.value}") from None
    except JSONError:
        raise
    except (ValueError, RecursionError) as err:
        if hasattr(err, "msg") and hasattr(err, "pos"):
            raise JSONError(f"{err.msg} at character {err.pos}") from None
        raise JSONError(str(err).split(":")[0] or "malformed JSON") from None
    except SystemError:
        # _json builds its error from json.decoder and fails with SystemError when that
        # module was never imported; import it now (error path only) for the real message.
        raise JSONError(_describe_error(text)) from None
    while pos < end and text[pos] in _WHITESPACE:
        pos += 1
    if pos != end:
        raise JSONError(f"extra data after the JSON value at character {pos}")
    return value


def _describe_error(text: str) -> str:
    try:
        import json

        json.loads(text)
    except ValueError as err:
        if hasattr(err, "msg") and hasattr(err, "pos"):
            return f"{err.msg} at character {err.pos}"
        return str(err) or "malformed JSON"
    except RecursionError:
        return "nested too deeply"
    return "malformed JSON"


def dumps(value: Any, compact: bool = False) -> str:
    """Serialize `value`; non-ASCII is escaped so the output is plain ASCII."""
    encoder = _compact if compact else _spaced
    return "".join(encoder(value, 0))
