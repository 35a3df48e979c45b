"""What the fuzz tests share: hypothesis settings, and a count of the cases each test fed."""
from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

# Derandomized: CI runs the same cases every time; HALPC_FUZZ_RANDOM=1 explores new ones.
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=not os.environ.get("HALPC_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class Cases(Counter):
    """Cases fed per test; `report` prints one test's count and the module's total."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def report(self, test: str) -> None:
        print(f"\nfuzz: {self[test]} {self.what} ({test}); {sum(self.values())} in this module so far")
