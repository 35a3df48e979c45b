"""Status lines on stderr while a long command works: shown only on a terminal, each line over
the one before, cleared at the end; silent with --quiet, with --json, or when stderr is a file
or a pipe (so logs and captured output never see them)."""
from __future__ import annotations

import shutil
import sys
from types import TracebackType


class TerminalProgress:
    def __init__(self, wanted: bool = True) -> None:
        self.enabled = wanted and sys.stderr.isatty()
        self.shown = False

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        sys.stderr.write("\r\x1b[K" + message[:width])
        sys.stderr.flush()
        self.shown = True

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.shown:  # leave the terminal as it was: the result or the error comes next
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
