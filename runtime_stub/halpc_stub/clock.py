"""The one clock every timestamp of a run is taken with: wall-clock time that never jumps.

A board without a real-time clock sets its time by NTP a while after boot, and `time.time()`
then jumps by hours: a fault bound or a latency measured across the jump would be nonsense. The
devices' timelines are still lined up by comparing their clocks (the host estimates each
device's offset from pings), so the readings must look like wall-clock time. Each process reads
the wall clock once, when this module is imported, and counts on from there monotonically.
"""
from __future__ import annotations

import time

_WALL_AT_START = time.time()
_MONOTONIC_AT_START = time.monotonic()


def now() -> float:
    """Seconds since the epoch as they were at start, advanced by the monotonic clock."""
    return _WALL_AT_START + (time.monotonic() - _MONOTONIC_AT_START)
