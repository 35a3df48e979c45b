"""How a long library call says what it is doing: a callback taking one short status line.

The library calls `progress("planning halp (4/6)")` between steps and never prints; the CLI shows
the lines on a terminal (`halpc.cli.progress`), a library user may log them or pass nothing.
"""
from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def silent(_message: str) -> None:
    """The progress of a caller that does not want it."""
