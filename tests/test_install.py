"""`pip install .` (not editable) gives a working halpc with its templates and both commands."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import models
from bundles import save

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_regular_install_compiles_with_packaged_templates(tmp_path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    assert (target / "halpc" / "templates" / "launch.sh.j2").exists()
    model = save(models.build("vgg16", 32, 32), tmp_path)
    cluster = tmp_path / "c.toml"
    cluster.write_text(
        '[[device]]\nname = "host"\nhost = true\naddress = "127.0.0.1:5701"\ngmacs = 1.0\n'
        '[[device]]\nname = "pi"\naddress = "127.0.0.1:5702"\ngmacs = 1.0\n'
    )
    # Run from an empty folder with only the installed copy on the path, not the source tree.
    env = dict(os.environ, PYTHONPATH=str(target))
    code = (
        "import sys, halpc, halpc_stub; from halpc.cli import main;"
        f"assert halpc.__file__.startswith({str(target)!r}), halpc.__file__;"
        "sys.argv = ['halpc'] + sys.argv[1:]; main()"
    )
    for args in (
        ["compile", str(model), "--cluster", str(cluster), "-o", str(tmp_path / "b")],
        ["verify", str(tmp_path / "b")],
    ):
        run = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    assert "bit-exact" in run.stdout
    assert (tmp_path / "b" / "pi" / "launch.sh").read_text().startswith("#!/bin/sh")
