import os
import sys
from pathlib import Path

import pytest

# examples/ is not a package; its modules are imported by bare name in tests.
_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)


# Tests that skip where the machine lacks what they need: the emulated cluster (network
# namespaces, tc and cgroups: root and iproute2) and the HTML screenshots (Chromium). As root,
# `make test` installs those packages first (`make system-deps`), and CI runs as root: there such
# a skip means a broken setup, and it must not pass as green. So as root these skips fail the
# test, unless HALPC_REQUIRE_ALL_TESTS=0 (a root shell that has not installed them). The tests'
# skip reasons start with these words.
MUST_RUN_AS_ROOT = ("no emulated cluster", "chromium is not installed")


def _skips_must_fail() -> bool:
    return os.geteuid() == 0 and os.environ.get("HALPC_REQUIRE_ALL_TESTS", "1") != "0"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and isinstance(report.longrepr, tuple) and _skips_must_fail()):
        return
    reason = report.longrepr[2].removeprefix("Skipped: ")
    if reason.startswith(MUST_RUN_AS_ROOT):
        report.outcome = "failed"
        report.longrepr = (f"{reason}\n(not skipped as root, where CI runs: run `make system-deps`, or set "
                           "HALPC_REQUIRE_ALL_TESTS=0 to skip it)")
