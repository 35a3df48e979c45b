"""One exception family for mistakes a user can fix; the CLI turns it into one line.

Anything else that escapes is a bug in halpc and is reported as such.
"""
from __future__ import annotations


class HalpcError(Exception):
    """A problem with the user's input: the message names what is wrong and what to do."""

    exit_code = 1


class UsageError(HalpcError):
    """The command line itself is wrong (exit status 2, like click's own usage errors)."""

    exit_code = 2
