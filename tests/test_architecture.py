"""The layout is enforced, not hoped for: import contracts, module sizes, private names, the
package list. Each check fails with the place to mend."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "compiler" / "halpc", ROOT / "runtime_stub" / "halpc_stub"]
MAX_LINES = 450


def modules() -> list[Path]:
    found = [p for folder in SOURCES for p in sorted(folder.rglob("*.py"))]
    assert len(found) > 40, found  # the walk found the packages
    return found


def test_import_contracts_hold() -> None:
    """Layers (lower never imports higher), no cycles among siblings, the stub never imports halpc:
    the contracts in pyproject.toml, checked by import-linter (function-local imports included)."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout + proc.stderr


def test_no_module_is_long() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by job (at most {MAX_LINES} lines): {long}"


def test_no_private_name_is_imported_from_another_module() -> None:
    """`from halpc.x import _helper` means the helper is not private: make it public where it belongs."""
    offences = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("halpc", "halpc_stub")):
                offences += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
                             for a in node.names if a.name.startswith("_")]
    assert not offences, offences


def test_no_module_shadows_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    shadowing = [str(p.relative_to(ROOT)) for p in modules() if p.stem in stdlib]
    assert not shadowing, shadowing


def test_every_package_is_listed_for_installation() -> None:
    """pyproject lists the packages by hand (templates/ lives at the top level): a new subpackage
    missing from the list would be missing from `pip install .`."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(folder.parent).parts) for folder in SOURCES
             for p in folder.rglob("__init__.py")}
    assert found and found | {"halpc.templates"} == listed, (sorted(found - listed), sorted(listed - found))
