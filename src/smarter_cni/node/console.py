"""What the operator sees: progress steps, tables, JSON, and errors that say what to do."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterable, Sequence, TextIO


class CLIError(Exception):
    """A failure for the operator: what went wrong and what to do about it."""

    def __init__(self, message: str, fix: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = code


class Output:
    """Human lines on stdout, or one JSON document with --json (progress then goes to stderr)."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.progress_stream = sys.stderr if as_json else self.stream

    def say(self, text: str = "") -> None:
        if not self.as_json:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A progress/info line that is shown in both modes (on stderr with --json)."""
        print(text, file=self.progress_stream, flush=True)

    def step(self, text: str) -> Step:
        return Step(self, text)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> None:
        if not self.as_json:
            for line in format_table(headers, rows):
                print(indent + line, file=self.stream)
            self.stream.flush()

    def emit(self, data: Any) -> None:
        if self.as_json:
            json.dump(data, self.stream, indent=2, sort_keys=True)
            self.stream.write("\n")
            self.stream.flush()


class Step:
    """`with out.step("Creating bridge smarter0"):` prints '... ok (0.2 s)' or '... FAILED'.

    A step whose work did not raise but found a failure calls `fail()`: the
    line then says FAILED too, never ok.
    """

    def __init__(self, out: Output, text: str) -> None:
        self.out = out
        self.text = text
        self.detail = ""
        self.failed = False
        self.started = 0.0

    def fail(self, detail: str = "") -> None:
        self.failed = True
        self.detail = detail

    def __enter__(self) -> Step:
        self.started = time.monotonic()
        print(f"  {self.text} ...", end="", file=self.out.progress_stream, flush=True)
        return self

    def __exit__(self, kind: Any, value: Any, trace: Any) -> None:
        took = time.monotonic() - self.started
        timing = f" ({took:.1f} s)" if took >= 0.5 else ""
        extra = f": {self.detail}" if self.detail else ""
        if kind is None and not self.failed:
            print(f" ok{extra}{timing}", file=self.out.progress_stream, flush=True)
        elif kind is None:
            print(f" FAILED{extra}{timing}", file=self.out.progress_stream, flush=True)
        else:
            print(" FAILED", file=self.out.progress_stream, flush=True)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    body = [["" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return lines


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CLIError(f"`smarter-cni {what}` changes the node's network and needs root",
                       f"run it again with sudo: sudo smarter-cni {what}")
