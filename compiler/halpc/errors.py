"""One exception family for mistakes a user can fix; the CLI turns it into one line.

`HalpcError` derives from the stub's `BundleError`, so one `except BundleError` catches every
user-facing error of both programs. Anything else that escapes is a bug in halpc, reported as one.
Library messages name the object at fault and the library's own parameter (`option`, e.g.
"input_shapes"); the CLI adds the command-line flag that sets it.
"""
from __future__ import annotations

from halpc_stub.errors import BundleError


class HalpcError(BundleError):
    """A problem with the user's input: the message names what is wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option  # the library parameter the message is about, if one


class UsageError(HalpcError):
    """The call itself is wrong: an argument that can never work (exit status 2, like click's)."""

    exit_code = 2


class CompilerBug(AssertionError):
    """halpc built something that contradicts its own arithmetic: a bug, never the user's fault."""
