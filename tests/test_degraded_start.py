"""A board still off when the run starts: the host starts without it within seconds, says so
once, runs every task exactly (the fastest plan without it, or the host alone) and takes the
board in when it answers; `--require-all` keeps the old refusal."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from halpc.host.run import spawn_stubs
from halpc_stub import clock
from halpc_stub.host import START_S, HostSession
from halpc_stub.manifest import load_manifest
from test_cli_errors import error_line, run_cli
from test_faults import Stream, back_for, compile_three


def wait_listening(stubs, out: Path, device: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while f"{device}: listening on" not in out.read_text():
        assert time.monotonic() < deadline, stubs.log(device)
        stubs.check()
        time.sleep(0.05)


@pytest.mark.parametrize("spares", [False, True], ids=["host-alone", "fallback-plans"])
def test_a_board_off_at_start_is_taken_in_when_it_answers(spares: bool, tmp_path: Path, caplog) -> None:
    bundle = compile_three(tmp_path, spares=spares)
    manifest = load_manifest(bundle)
    stream = Stream(bundle)
    started: list[float] = []
    caplog.set_level(logging.WARNING, logger="halpc_stub.host")
    out = tmp_path / "stubs.out"
    with out.open("w") as stdout, spawn_stubs(bundle, manifest, stdout=stdout, devices=["dev-2"]) as stubs, \
            HostSession(bundle) as host:
        wait_listening(stubs, out, "dev-2")
        began = clock.now()
        host.connect()
        assert clock.now() - began < START_S + 1.0, "the host waited for the missing board"
        assert set(host.down) == {"dev-1"}
        said = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("dev-1 did not answer within 2.0 s at 127.0.0.1:"), said

        def start_dev1() -> None:
            stubs.start("dev-1")
            started.append(clock.now())

        results = stream.run(host, {6: start_dev1}, back_for(8, started))  # exact, each once, in order
    before = results[:6]
    if spares:  # host and dev-2 split the tasks while dev-1 is off
        assert all(r.plan == "even-without-dev-1" and r.fallback == "dev-1 down" for r in before), before
    else:
        assert all(r.unsplit for r in before), before
    assert not host.down and not host.faults
    assert results[-1].plan == manifest.id and not results[-1].unsplit
    assert any("dev-1 answers after" in r.getMessage() for r in caplog.records)


def test_run_starts_without_silent_boards_and_require_all_refuses(tmp_path: Path) -> None:
    bundle = compile_three(tmp_path)
    began = time.monotonic()
    proc = run_cli("run", bundle, "--tasks", "3", "--check", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 25, "waited the whole default timeout"
    missing = [line for line in proc.stderr.splitlines() if "did not answer" in line]
    assert len(missing) == 2 and all(any(f"{d} did not answer" in m for m in missing) for d in ("dev-1", "dev-2")), \
        proc.stderr
    assert "3/3 bit-exact" in proc.stdout, proc.stdout
    refused = run_cli("run", bundle, "--require-all", "--timeout", "1")
    error_line(refused, "dev-1, dev-2 did not answer within 1 s", "start `halpc-stub` there")


def test_a_board_that_answers_for_another_target_stays_out(tmp_path: Path, caplog) -> None:
    """Taken in only with the bundle's plan and target: an ARM board answering for this x86
    bundle stays down, said once (the same check as at the start)."""
    from halpc_stub.session import this_target

    bundle = compile_three(tmp_path)
    with HostSession(bundle) as host:
        since = clock.now()
        host.down["dev-1"] = since
        arm = {**this_target(host.manifest), "arch": "aarch64", "nchwc": False}
        for k in range(3):
            host.node.pongs["dev-1"] = {"bundle": host.node.bundle_checksum, "received": since + k + 1, **arm}
            host._readmit(since + k + 1)
        assert "dev-1" in host.down
        said = [r.getMessage() for r in caplog.records if "dev-1 is aarch64 without NCHWc" in r.getMessage()]
        assert len(said) == 1 and "it stays down" in said[0], said
