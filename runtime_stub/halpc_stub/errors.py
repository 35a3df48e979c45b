"""Errors of the stub: one line each, naming the file, device or field at fault."""
from __future__ import annotations


class BundleError(Exception):
    """The bundle on this device is missing, damaged, or not the one the host expects."""

    exit_code = 1
