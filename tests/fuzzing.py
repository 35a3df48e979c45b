"""What the fuzz tests share: hypothesis settings, and a count of the cases each test fed."""
from __future__ import annotations

import os
from collections import Counter

from hypothesis import settings

# Derandomized: CI runs the same cases every time; HALPC_FUZZ_RANDOM=1 explores new ones.
# No health check is suppressed: none of these strategies filters (no assume, no .filter), their
# draws are small and fast (too_slow allows 30 s of drawing for the first 10 examples with no
# deadline), so a health check that fires means a strategy broke. And each test asserts, through
# `Cases.report`, that every example it asked for ran: hypothesis ends a run early, without an
# error, when it runs out of valid examples.
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=not os.environ.get("HALPC_FUZZ_RANDOM"),
)


class Cases(Counter):
    """Cases fed per test (CLI runs, messages), and the hypothesis examples each test ran to the
    end (`example`); `report` prints them and fails a test that ran fewer than it asks for."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.examples: Counter[str] = Counter()

    def example(self, test: str) -> None:
        """One example of `test` ran to its end (call it last in the example's body)."""
        self.examples[test] += 1

    def report(self, test: str, *, examples: int = 0, cases: int = 1) -> None:
        """Print `test`'s counts; assert it ran at least `examples` examples and fed at least
        `cases` cases (derandomized, both are the same on every run)."""
        ran = f", {self.examples[test]} examples" if examples else ""
        print(f"\nfuzz: {self[test]} {self.what} ({test}{ran}); {sum(self.values())} in this module so far")
        assert self.examples[test] >= examples, \
            f"{test}: {self.examples[test]} examples ran, fewer than the {examples} asked for"
        assert self[test] >= cases, f"{test}: {self[test]} {self.what}, fewer than {cases}"
