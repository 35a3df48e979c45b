"""Error paths found on reading the code: a full or read-only disk under `compile -o`, a bug
inside `verify`, a strip ONNX Runtime cannot load, another ONNX Runtime on a device, a wall clock
that jumps. Each one is one line naming the object and what to do (or, for a bug, says it is
one), and nothing is left half-written."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import models  # examples/models.py (conftest puts examples/ on sys.path)
from bundles import save
from halpc.compile import compile_bundle
from halpc.host.verify import random_inputs
from test_cli_errors import assert_nothing_written, error_line, run_cli

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """A small VGG-16 and a 2-device cluster file on ports nothing uses."""
    folder = tmp_path_factory.mktemp("errors")
    model = save(models.build("vgg16", 32, 32), folder, "vgg16.onnx")
    cluster = folder / "cluster.toml"
    cluster.write_text('[[device]]\nname = "host"\nhost = true\naddress = "127.0.0.1:5790"\ngmacs = 8\n'
                       '[[device]]\nname = "dev-1"\naddress = "127.0.0.1:5791"\ngmacs = 8\n')
    return model, cluster


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False):
    """A small file system of our own (as root): a full disk or a read-only one, for real."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs",
                    str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.skipif(not ROOT, reason="mounting a small file system needs root")
def test_compile_onto_a_full_disk_is_one_line_and_leaves_nothing(small, tmp_path) -> None:
    model, cluster = small
    with tmpfs(tmp_path / "tiny", "2m") as disk:  # the bundle is about 3 MB
        out = disk / "bundle"
        line = error_line(run_cli("compile", model, "--cluster", cluster, "-o", out, "--insecure"),
                          str(out), "cannot write the bundle", "No space left on device")
        assert line.startswith("halpc: error: -o ")
        assert_nothing_written(out)
        assert not any(disk.iterdir())


@pytest.mark.skipif(not ROOT, reason="mounting a small file system needs root")
def test_compile_into_a_read_only_folder_is_one_line(small, tmp_path) -> None:
    model, cluster = small
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        out = disk / "bundle"
        error_line(run_cli("compile", model, "--cluster", cluster, "-o", out, "--insecure"),
                   str(out), "cannot write the bundle", "Read-only file system")
        assert not any(disk.iterdir())


def test_a_bug_inside_verify_is_reported_as_a_bug_not_as_the_users_bundle(small, tmp_path, capsys,
                                                                             monkeypatch) -> None:
    """Before, verify turned every exception into 'the manifest does not match ... recompile'."""
    import halpc.host.verify as verify_module
    from halpc.cli import main

    model, cluster = small
    bundle = tmp_path / "b"
    compile_bundle(model, cluster, bundle, "even", insecure=True)

    def broken(*args, **kwargs):
        raise AssertionError("an internal invariant of the executor failed")

    monkeypatch.setattr(verify_module, "run_bundle", broken)
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(bundle)])
    err = capsys.readouterr().err
    assert exit_.value.code == 70 and "Traceback" in err
    assert "internal error (AssertionError): this is a bug in halpc" in err.splitlines()[-1]
    assert "recompile" not in err


def stub(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HALPC_PYTHON": sys.executable}
    return subprocess.run([str(bundle / "dev-1" / "launch.sh"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def rewrite_artifact(bundle: Path, rel: str, data: bytes) -> None:
    """Replace a bundle file and give the manifests its new checksum: the file is what the
    manifest names, and only ONNX Runtime can tell it is unusable."""
    (bundle / rel).write_bytes(data)
    for path in (bundle / "manifest.json", bundle / "dev-1" / "manifest.json"):
        manifest = json.loads(path.read_text())
        manifest["artifacts"][rel] = hashlib.sha256(data).hexdigest()
        path.write_text(json.dumps(manifest))


def test_a_strip_onnxruntime_cannot_load_is_one_line_naming_it(small, tmp_path) -> None:
    model, cluster = small
    bundle = tmp_path / "b"
    compile_bundle(model, cluster, bundle, "even", insecure=True)
    rel = next(r for r in json.loads((bundle / "manifest.json").read_text())["artifacts"]
               if r.startswith("dev-1/") and r.endswith(".onnx"))
    # A well-formed model of an op this ONNX Runtime does not have.
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.unknown")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    unknown = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("example.unknown", 1)])
    rewrite_artifact(bundle, rel, unknown.SerializeToString())
    proc = stub(bundle, "--check")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert Path(rel).name in line and "cannot load it" in line and "install that one" in line


def test_stub_check_refuses_another_onnxruntime(small, tmp_path) -> None:
    model, cluster = small
    bundle = tmp_path / "b"
    compile_bundle(model, cluster, bundle, "even", insecure=True)
    for path in (bundle / "manifest.json", bundle / "dev-1" / "manifest.json"):
        manifest = json.loads(path.read_text())
        manifest["onnxruntime"] = "0.0.1"
        path.write_text(json.dumps(manifest))
    proc = stub(bundle, "--check")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "compiled for onnxruntime '0.0.1'" in line and "pip install 'onnxruntime==0.0.1'" in line


def test_a_wall_clock_jump_on_the_host_is_no_fault(small, tmp_path, monkeypatch) -> None:
    """A board without a real-time clock gets its time by NTP while it runs: time.time() jumps
    an hour. Bounds, latencies and timelines must not notice."""
    from halpc.host.run import local_popen, run
    from halpc_stub.manifest import load_manifest

    model, cluster = small
    bundle = tmp_path / "b"
    compile_bundle(model, cluster, bundle, "even", insecure=True)
    real = time.time
    jumps = iter(range(10**9))
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0 * (next(jumps) % 2))  # every other call
    manifest = load_manifest(bundle)
    summary = run(bundle, [random_inputs(manifest, s) for s in range(4)], in_flight=1, check=True,
                  spawn=local_popen, timeout_s=60)
    assert summary.exact and not summary.faults and not any(r.fallback for r in summary.results)
    assert all(0 < r.latency_s < 30 for r in summary.results)
    assert all(abs(e["start"] - r.start) < 60 for r in summary.results for e in r.events)
    assert np.isfinite(summary.throughput)


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as a person runs it), stdout on a pipe."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "halpc.cli", *args], stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    err = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read()
    proc.wait()
    os.close(leader)
    return proc.returncode, out.decode(), err.decode(errors="replace")


def test_long_commands_show_progress_on_a_terminal_only(small, tmp_path) -> None:
    model, cluster = small
    code, out, err = run_on_terminal("compile", str(model), "--cluster", str(cluster), "-o", str(tmp_path / "b"),
                                     "--insecure")
    assert code == 0 and "planning halp" in err and "writing the strips" in err
    assert err.rstrip(" ").endswith("\x1b[K") or "WARNING" in err.splitlines()[-1]  # the last line is cleared
    assert "planning" not in out and "wrote" in out
    code, out, err = run_on_terminal("compile", str(model), "--cluster", str(cluster), "-o", str(tmp_path / "b"),
                                     "--insecure", "--quiet")
    assert code == 0 and "planning" not in err
    code, out, err = run_on_terminal("plan", str(model), "--cluster", str(cluster), "--json")
    assert code == 0 and "planning" not in err and json.loads(out)["strategies"]
    proc = run_cli("verify", tmp_path / "b")  # stderr a pipe: no progress
    assert proc.returncode == 0 and proc.stderr == ""
