"""The emulated edge cluster: namespaces, shaped links, cut/restore and a clean teardown."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from halpc.measure import netlab
from halpc.errors import HalpcError

_REASON = netlab.available()
# Each test skips (not the module at collection), so that conftest.py can fail the skip as root.
pytestmark = pytest.mark.skipif(bool(_REASON), reason=f"no emulated cluster here: network namespaces unavailable: "
                                                      f"{_REASON}")

# A TCP server that prints its port and then only listens (the kernel completes handshakes).
_LISTENER = "import socket,time; s=socket.socket(); s.bind(('0.0.0.0',0)); s.listen(8); print(s.getsockname()[1], flush=True); time.sleep(600)"


def _listen(lab, device):
    proc = lab.popen(device, [sys.executable, "-c", _LISTENER], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def _connect(lab, device, port, timeout=1.0):
    with socket.create_connection((lab.ip(device), port), timeout=timeout) as conn:
        return conn.getsockname()[0]


def _leftovers(tag):
    """Names of the namespaces and root-namespace links that belong to the lab ``tag``."""
    text = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    text += subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return set(re.findall(rf"\b{tag}(?:br|[nv]\d+)\b", text))


@pytest.fixture
def lab():
    with netlab.NetLab({"dev-1": 50, "dev-2": 50}) as lab:
        yield lab


def test_host_reaches_a_server_in_each_namespace(lab):
    assert lab.netns("dev-1") != lab.netns("dev-2")
    for device in ("dev-1", "dev-2"):
        _, port = _listen(lab, device)
        assert _connect(lab, device, port) == lab.host_ip


def test_goodput_follows_the_rate_and_set_rate_changes_it(lab):
    # TCP over Ethernet carries at most ~95.6% of the line rate as payload.
    assert 0.85 * 50 <= netlab.measure_goodput(lab, "dev-1") <= 1.02 * 50
    lab.set_rate("dev-1", 20)
    assert 0.85 * 20 <= netlab.measure_goodput(lab, "dev-1", 2_000_000) <= 1.02 * 20
    assert 0.85 * 50 <= netlab.measure_goodput(lab, "dev-2") <= 1.02 * 50  # the other link is untouched


def test_cut_times_out_and_restore_reconnects(lab):
    _, port = _listen(lab, "dev-1")
    _connect(lab, "dev-1", port)
    lab.cut("dev-1")
    with pytest.raises(TimeoutError):  # dropped silently, no reset
        _connect(lab, "dev-1", port, timeout=0.5)
    lab.restore("dev-1")
    _connect(lab, "dev-1", port)


def test_close_ends_processes_and_removes_every_object():
    lab = netlab.NetLab({"dev-1": 100, "dev-2": 100})
    tag = lab.netns("dev-1")[:-2]  # "hl<pid>_<n>" shared by every object of this lab
    proc, _ = _listen(lab, "dev-2")
    assert len(_leftovers(tag)) == 2 + 3  # namespaces; bridge and two veths
    lab.close()
    lab.close()
    assert proc.poll() is not None
    assert not _leftovers(tag)


def test_failed_setup_removes_what_it_created(monkeypatch):
    real_run = netlab._run

    def run(*argv, **kwargs):
        if argv[:2] == ("tc", "-n") and argv[2].endswith("n1"):  # shaping the second device
            raise HalpcError("tc failed on purpose")
        return real_run(*argv, **kwargs)

    monkeypatch.setattr(netlab, "_run", run)
    with pytest.raises(HalpcError, match="on purpose"):
        netlab.NetLab({"dev-1": 10, "dev-2": 10})
    assert not _leftovers(f"hl{os.getpid():x}_[0-9a-f]+")


def test_objects_of_a_killed_process_are_removed_by_the_next_lab():
    child = subprocess.Popen(
        [sys.executable, "-c", "from halpc.measure import netlab; l = netlab.NetLab({'d': 10}); print(l.netns('d'), flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    tag = child.stdout.readline().strip()[:-2]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert _leftovers(tag)
    with netlab.NetLab({"d": 10}):
        assert not _leftovers(tag)


def test_a_crashing_process_leaves_nothing_behind():
    script = "from halpc.measure import netlab; l = netlab.NetLab({'d': 10}); print(l.netns('d'), flush=True); 1/0"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "ZeroDivisionError" in child.stderr
    assert not _leftovers(child.stdout.strip()[:-2])


def test_unknown_device_and_bad_rate_are_user_errors(lab):
    with pytest.raises(HalpcError, match="no device 'dev-9'"):
        lab.ip("dev-9")
    with pytest.raises(HalpcError, match="must be positive"):
        lab.set_rate("dev-1", 0)


def test_setup_is_fast_and_two_labs_do_not_clash():
    start = time.perf_counter()
    with netlab.NetLab({f"dev-{i}": 100 for i in range(4)}) as a, netlab.NetLab({"dev-0": 100}) as b:
        assert time.perf_counter() - start < 5
        assert a.host_ip != b.host_ip and a.netns("dev-0") != b.netns("dev-0")


_SPIN = ("import time, resource; end = time.time() + 1.0\n"
         "while time.time() < end: pass\n"
         "print(resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime)")


def test_a_cpu_share_slows_a_device_and_is_removed_after():
    why = netlab.cpu_limits_available()
    if why:
        pytest.skip(f"no emulated cluster with CPU limits here: {why}")
    with netlab.NetLab({"dev-1": 100}, cpu={"dev-1": 0.25, "host": 0.5}) as lab:
        proc = lab.popen("dev-1", [sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
        cpu_seconds = float(proc.communicate(timeout=30)[0])
        groups = [limit.path for limit in lab._cpu.values()]
        assert all(g.is_dir() for g in groups)
        with lab.limit_host():
            assert str(os.getpid()) in (lab._cpu["host"].path / "cgroup.procs").read_text().split()
        assert str(os.getpid()) not in (lab._cpu["host"].path / "cgroup.procs").read_text().split()
    # A second of spinning got a quarter of a core (plus start-up before it joined the group).
    assert 0.15 < cpu_seconds < 0.45, cpu_seconds
    assert not any(g.exists() for g in groups)
    with pytest.raises(HalpcError, match="CPU share"):
        netlab.CpuLimit("hl_bad", 0)
