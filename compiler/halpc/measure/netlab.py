"""An emulated edge cluster on one Linux machine: one network namespace per device.

Every device gets its own namespace, joined to a bridge in the root namespace by a veth
pair.  The bridge holds the *host* address (:attr:`NetLab.host_ip`), so the calling
process -- the host of the distributed inference -- binds its sockets there, while device
processes run inside their namespaces (:meth:`NetLab.popen`).  Each device's link is
shaped with ``tbf`` in both directions: on the namespace-side ``eth0`` (upload) and on
the root-side veth (download).  Needs root and iproute2 (``ip``, ``tc``); no netem.

Every object is named ``hl<pid in hex>_<lab number>...`` and lives in its own
``10.213.X.0/24``, so labs of different processes never clash; objects left behind by a
process that died are removed the next time a lab is set up.  Nothing else on the machine
(its loopback, its real interfaces) is touched.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from halpc.errors import HalpcError

_PREFIX = "hl"
_NAME = re.compile(rf"^{_PREFIX}([0-9a-f]+)_")  # the pid of the process that made the object
_SUBNET = "10.213"
_labs = itertools.count()
_CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
_CGROUP_V2 = Path("/sys/fs/cgroup")


def available() -> str | None:
    """None when namespaces can be created here, else the reason (not root, no ``ip``...)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        ensure_iproute2()
    except HalpcError as e:
        return str(e)
    probe = f"{_PREFIX}{os.getpid():x}_probe"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "-n", probe, "link", "add", "name", "b", "type", "bridge")
        _run("ip", "-n", probe, "link", "add", "name", "v0", "type", "veth", "peer", "name", "v1")
        _run("tc", "-n", probe, "qdisc", "add", "dev", "v0", "root", *_tbf(50))
    except HalpcError as e:
        return str(e)
    finally:
        _run("ip", "netns", "delete", probe, check=False)
    return None


def ensure_iproute2() -> None:
    """Install iproute2 with apt-get when ``ip`` or ``tc`` is missing and we are root."""
    if shutil.which("ip") and shutil.which("tc"):
        return
    if os.geteuid() != 0:
        raise HalpcError("iproute2 (ip, tc) is missing; install it as root: apt-get install iproute2")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get", "update", "-qq", env=env)
    _run("apt-get", "install", "-y", "-qq", "iproute2", env=env)


def cpu_limits_available() -> str | None:
    """None when CPU shares can be limited here (cgroup CPU bandwidth control), else why not."""
    if os.geteuid() != 0:
        return "CPU limits need root"
    if _CGROUP_V1.is_dir() and (_CGROUP_V1 / "cpu.cfs_quota_us").exists():
        return None
    controllers = _CGROUP_V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return None
    return "no cgroup CPU controller (cpu.cfs_quota_us or cpu.max) here"


class CpuLimit:
    """A cgroup whose processes together get `share` of one core: a board slower than this
    machine. CFS bandwidth control gives the share every period; the shortest period its 1 ms
    minimum quota allows keeps the stalls short (4 ms at a quarter core). `add(pid)` moves a
    process (all its threads) in; `close()` moves every process back out and deletes the group."""

    def __init__(self, name: str, share: float) -> None:
        if not 0 < share <= (os.cpu_count() or 1):
            raise HalpcError(f"CPU share {share} must be in (0, {os.cpu_count()}]")
        why = cpu_limits_available()
        if why:
            raise HalpcError(why)
        period = round(1000 / min(share, 1.0))
        quota = round(share * period)
        self.v1 = _CGROUP_V1.is_dir() and (_CGROUP_V1 / "cpu.cfs_quota_us").exists()
        root = _CGROUP_V1 if self.v1 else _CGROUP_V2
        self.parent = root / "cgroup.procs"
        self.path = root / name
        self.path.mkdir(exist_ok=True)
        if self.v1:
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {period}")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                self.parent.write_text(pid)
            except OSError:
                pass  # exited meanwhile
        try:
            self.path.rmdir()
        except OSError:
            pass


class NetLab:
    """Namespaced devices behind shaped links; use as a context manager.

    ``devices`` maps device names to link rates in Mbit/s.  Device ``i`` (in dict
    order) has address ``10.213.X.(i+2)``; the host is ``10.213.X.1``. ``cpu`` gives
    devices (the host too, by its name) a share of one core (`CpuLimit`): processes started
    with `popen` run under their device's share; `limit_host()` puts this process under the
    host's.
    """

    def __init__(self, devices: dict[str, float], cpu: dict[str, float] | None = None):
        if not 1 <= len(devices) <= 250:
            raise HalpcError(f"a NetLab holds 1 to 250 devices, not {len(devices)}")
        self._closed = False
        self._procs: list[subprocess.Popen] = []
        tag = f"{_PREFIX}{os.getpid():x}_{next(_labs) % 256:x}"
        self._bridge = f"{tag}br"
        self._index = {name: i for i, name in enumerate(devices)}
        atexit.register(self.close)
        try:
            _remove_stale()
            net = f"{_SUBNET}.{_free_subnet()}"
            self.host_ip = f"{net}.1"
            self._ips = {name: f"{net}.{i + 2}" for name, i in self._index.items()}
            self._netns = {name: f"{tag}n{i}" for name, i in self._index.items()}
            self._veth = {name: f"{tag}v{i}" for name, i in self._index.items()}
            _run("ip", "link", "add", self._bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self._bridge)
            _run("ip", "link", "set", self._bridge, "up")
            for name, mbps in devices.items():
                self._add_device(name, mbps)
            self._cpu = {name: CpuLimit(f"{tag}c{name}", share) for name, share in (cpu or {}).items()}
        except BaseException:
            self.close()
            raise

    def _add_device(self, name: str, mbps: float) -> None:
        ns, veth = self._netns[name], self._veth[name]
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self._bridge, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self._ips[name]}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        self.set_rate(name, mbps)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ip(self, device: str) -> str:
        """The device's address, reachable from the host and from the other devices."""
        return self._ips[self._device(device)]

    def netns(self, device: str) -> str:
        """The name of the device's network namespace (for ``ip netns exec``)."""
        return self._netns[self._device(device)]

    def popen(self, device: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside the device's namespace; :meth:`close` ends it."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns(device), *argv], **kwargs)
        self._procs.append(proc)
        if device in self._cpu:
            self._cpu[device].add(proc.pid)  # `ip netns exec` and launch.sh exec: one pid
        return proc

    @contextlib.contextmanager
    def limit_host(self, name: str = "host"):
        """Run this process (the host's side of a run) under the share `cpu` gave `name`."""
        limit = self._cpu.get(name)
        if limit is None:
            yield
            return
        limit.add(os.getpid())
        try:
            yield
        finally:
            limit.parent.write_text(str(os.getpid()))

    def gmacs(self, device: str, model: str | os.PathLike[str], threads: int = 1) -> float:
        """GMAC/s of `model` run here with `threads` threads under `device`'s CPU share: what
        to write in the cluster file for the emulated board (median of 5 runs after one)."""
        import numpy as np

        from halpc.inputs.model import load_model
        from halpc.measure.profiler import median_run_seconds
        from halpc.analyse.trunk import analyse
        from halpc_stub.session import make_session

        session = make_session(str(model), threads)
        feeds = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs()}
        with self.limit_host(device):
            seconds = median_run_seconds(session, feeds, repeat=5)
        return analyse(load_model(model)).macs / seconds / 1e9

    def set_rate(self, device: str, mbps: float) -> None:
        """Shape the device's link to ``mbps`` in both directions, live."""
        if not mbps > 0:
            raise HalpcError(f"link rate of {device!r} must be positive, not {mbps}")
        ns = self.netns(device)
        _run("tc", "-n", ns, "qdisc", "replace", "dev", "eth0", "root", *_tbf(mbps))
        _run("tc", "qdisc", "replace", "dev", self._veth[device], "root", *_tbf(mbps))

    def cut(self, device: str) -> None:
        """Cut the device off (switch-side link down): packets vanish, no resets."""
        _run("ip", "link", "set", self._veth[self._device(device)], "down")

    def restore(self, device: str) -> None:
        """Undo :meth:`cut`."""
        _run("ip", "link", "set", self._veth[self._device(device)], "up")

    def close(self) -> None:
        """End processes started here, delete namespaces, veths and bridge (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        _stop(self._procs)
        for limit in getattr(self, "_cpu", {}).values():
            limit.close()
        for name in getattr(self, "_netns", {}):
            _run("ip", "link", "delete", self._veth[name], check=False)
            _delete_netns(self._netns[name])
        _run("ip", "link", "delete", self._bridge, check=False)

    def _device(self, device: str) -> str:
        if device not in self._index:
            raise HalpcError(f"no device {device!r} in this NetLab (have: {', '.join(self._index)})")
        return device


class TraceReplay:
    """Play a bandwidth trace (`halpc.whatif.bandwidth_trace.Trace`) on a lab's links, live: from `start()` a
    thread sets each device's tbf rate at the trace's times. `applied` lists (seconds since
    start, device, Mbit/s) of every change made."""

    def __init__(self, lab: NetLab, trace, devices: list[str]) -> None:
        self.lab, self.trace, self.devices = lab, trace, list(devices)
        self.applied: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="trace-replay", daemon=True)
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> TraceReplay:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _play(self) -> None:
        current: dict[str, float] = {}
        for t in self.trace.times:
            if self._stop.wait(max(0.0, self.started + t - time.monotonic())):
                return
            for device, mbps in self.trace.at(t, self.devices).items():
                if current.get(device) != mbps:
                    self.lab.set_rate(device, mbps)
                    current[device] = mbps
                    self.applied.append((time.monotonic() - self.started, device, mbps))


_SERVER = """
import socket
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
n = 0
while chunk := c.recv(1 << 16):
    n += len(chunk)
c.sendall(str(n).encode())
"""


def measure_goodput(lab: NetLab, device: str, nbytes: int = 4_000_000) -> float:
    """Mbit/s of one TCP transfer of ``nbytes`` from the host to ``device``.

    Timed from the established connection until the device confirms it received all bytes.
    The first ``burst`` bytes pass at full speed, so send at least ~0.3 s worth of data
    (4 MB is enough up to 100 Mbit/s; 1000 Mbit/s needs about 40 MB).
    """
    server = lab.popen(device, [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line:
            raise HalpcError(f"goodput test: the server in {lab.netns(device)} did not start")
        port = int(line)
        with socket.create_connection((lab.ip(device), port), timeout=30) as conn:
            start = time.perf_counter()
            conn.sendall(bytes(nbytes))
            conn.shutdown(socket.SHUT_WR)
            received = conn.recv(64)
            seconds = time.perf_counter() - start
    finally:
        _stop([server])
    if received != str(nbytes).encode():
        raise HalpcError(f"goodput test to {device!r}: the device confirmed {received!r}, not {nbytes}")
    return nbytes * 8 / seconds / 1e6


def _tbf(mbps: float) -> list[str]:
    """tbf arguments for ``mbps``; the burst grows with the rate (4 ms worth, at least 32 KiB)."""
    burst = max(32 * 1024, int(mbps * 1e6 / 8 / 250))
    return ["tbf", "rate", f"{mbps * 1000:.0f}kbit", "burst", str(burst), "latency", "100ms"]


def _run(*argv: str, check: bool = True, env: dict | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and result.returncode:
        why = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise HalpcError(f"`{' '.join(argv)}` failed: {why}")
    return result.stdout


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL whatever is still running a second later."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 1.0
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _delete_netns(ns: str) -> None:
    """Kill whatever still runs in ``ns`` (children of processes started there), then delete it."""
    for pid in _run("ip", "netns", "pids", ns, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    _run("ip", "netns", "delete", ns, check=False)


def _remove_stale() -> None:
    """Delete objects with our prefix whose creating process is gone."""
    def dead(name: str) -> bool:
        match = _NAME.match(name)
        if not match:
            return False
        try:
            os.kill(int(match.group(1), 16), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    links = re.findall(r"^\d+: ([^:@\s]+)", _run("ip", "-o", "link", "show"), re.M)
    for link in filter(dead, links):
        _run("ip", "link", "delete", link, check=False)
    for ns in filter(dead, (line.split()[0] for line in _run("ip", "netns", "list").splitlines())):
        _delete_netns(ns)
    for root in (_CGROUP_V1, _CGROUP_V2):
        if root.is_dir():
            for group in root.iterdir():
                if group.is_dir() and dead(group.name):
                    with contextlib.suppress(OSError):
                        group.rmdir()  # empty: its processes died with their maker


def _free_subnet() -> int:
    """X for a 10.213.X.0/24 that no address or route on this machine uses yet."""
    used = _run("ip", "-4", "addr", "show") + _run("ip", "-4", "route", "show")
    for offset in range(256):
        x = (os.getpid() + offset) % 256
        if f"{_SUBNET}.{x}." not in used:
            return x
    raise HalpcError(f"every {_SUBNET}.X.0/24 is in use; close some NetLabs")
