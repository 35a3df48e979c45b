"""The cluster file: which devices take part, how to reach them, and how fast the links are.

A cluster file is TOML::

    [network]                 # optional; default for every pair of devices
    bandwidth_mbps = 100      # megabits per second (default 100)
    latency_ms = 2            # one-way latency in milliseconds (default 2)

    [[device]]
    name = "host"             # safe folder name: letters, digits, '-', '_', '.'; not starting with '.'
    host = true               # exactly one host: it holds the model input and output
    address = "127.0.0.1:5701"  # HOST:PORT (IPv4, hostname, or [IPv6]:PORT), port 1..65535
    gmacs = 8.0               # sustained conv throughput in GMAC/s (required unless profile is given)
    threads = 1               # ONNX Runtime intra-op threads (optional, default 1)
    # arch = "aarch64"        # its CPU and ONNX Runtime kernels: aarch64 (Raspberry Pi, Jetson), x86_64, or
                              # x86_64-nonchwc; default: the machine that compiles (or halpc compile --arch)
    # profile = "pi4.json"    # optional measured device profile, relative to this file's folder

    [[device]]
    name = "pi-2"
    address = "127.0.0.1:5702"
    gmacs = 8.0

    [[link]]                  # optional override for one (unordered) pair of devices
    between = ["host", "pi-2"]
    bandwidth_mbps = 50       # at least one of bandwidth_mbps / latency_ms;
    # latency_ms = 5          # the one left out comes from [network]

Several sources (cameras) sharing helper nodes: instead of one host, mark each camera
``source = true`` with the model it runs and its frame rate; every other device is a helper
that any source may offload to (``halpc compile --strategy matching``)::

    [[device]]
    name = "cam-1"
    source = true
    model = "mobilenet.onnx"  # relative to this file's folder
    rate_hz = 10              # frames a second
    address = "10.0.0.11:5701"
    gmacs = 2.0

Rules worth knowing:

* ``[network]`` is optional; without it every pair gets 100 Mbit/s and 2 ms
  (:data:`DEFAULT_BANDWIDTH_MBPS`, :data:`DEFAULT_LATENCY_MS`), as does any key left out of it.
* The host is moved to the front of :attr:`Cluster.devices` (other devices keep file order),
  because downstream code relies on ``devices[0]`` being the host.  Error messages, however,
  number devices and links by their position in the file, counting from 1
  (``device[2]`` is the second ``[[device]]`` table).
* Unknown keys anywhere are errors (typo protection), and every problem raises
  :class:`~halpc.errors.HalpcError` with a one-line message naming the file and the field.
  The checks are :mod:`halpc.inputs.cluster_schema` (pydantic models for each table, then the
  rules between them); this module turns the checked document into the dataclasses below.
* Device names become folder names in the bundle, so they are compared case-insensitively
  for duplicates (``Pi-2`` and ``pi-2`` would collide on macOS/Windows file systems).
* Duplicate addresses are detected after normalising (case of host names, IP spelling, port
  number); different spellings of one machine (``localhost`` vs ``127.0.0.1``) are not.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from halpc.errors import HalpcError
from halpc.inputs.cluster_schema import (
    DEFAULT_BANDWIDTH_MBPS,
    DEFAULT_LATENCY_MS,
    parse_address,
    validate_cluster,
)
from halpc.inputs.cluster_schema import show as _show
from halpc.inputs.schema import one_line as _one_line

__all__ = [
    "DEFAULT_BANDWIDTH_MBPS",
    "DEFAULT_LATENCY_MS",
    "Cluster",
    "Device",
    "Link",
    "load_cluster",
    "parse_address",
    "parse_cluster",
]

# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Device:
    """One machine in the cluster.

    ``gmacs`` is ``None`` only when ``profile`` (a path to a measured device profile JSON,
    already resolved against the cluster file's folder) is given; both may be given.
    """

    name: str
    host: bool
    address: str
    gmacs: float | None
    threads: int = 1
    profile: str | None = None
    source: bool = False  # a camera of a cluster of several sources, with its model and frame rate
    model: str | None = None
    rate_hz: float | None = None
    arch: str | None = None  # its target (inputs.target.TARGETS); None: the compile's default
    int8_gmacs: float | None = None  # integer convolutions' rate (None: its profile's, else gmacs)
    memory_mb: float | None = None  # what its part may take (planner.memory); None: no limit


@dataclass(frozen=True)
class Link:
    """Bandwidth (Mbit/s) and one-way latency (ms) between devices ``a`` and ``b`` (symmetric)."""

    a: str
    b: str
    bandwidth_mbps: float
    latency_ms: float


@dataclass(frozen=True)
class Cluster:
    """All devices (host first), the default network, and per-pair link overrides."""

    devices: tuple[Device, ...]
    network_bandwidth_mbps: float
    network_latency_ms: float
    links: tuple[Link, ...]
    source: str

    def __post_init__(self) -> None:
        # Invariants downstream code relies on; the loaders guarantee them with friendly
        # messages, so a failure here is a programming error.
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "links", tuple(self.links))
        if not self.devices or not self.devices[0].host:
            raise ValueError("Cluster.devices must start with the host device")
        if any(d.host for d in self.devices[1:]):
            raise ValueError("Cluster.devices must contain exactly one host device")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"Cluster.devices has duplicate names: {names}")

    # -- lookups

    @property
    def host(self) -> Device:
        """The host device (always ``devices[0]``)."""
        return self.devices[0]

    @property
    def secondaries(self) -> tuple[Device, ...]:
        """Every device except the host, in file order."""
        return self.devices[1:]

    @property
    def names(self) -> tuple[str, ...]:
        """Device names, host first."""
        return tuple(d.name for d in self.devices)

    def __len__(self) -> int:
        return len(self.devices)

    def without(self, device: str) -> Cluster:
        """The cluster less one helper device and its links."""
        return dataclasses.replace(
            self, devices=tuple(d for d in self.devices if d.name != device),
            links=tuple(link for link in self.links if device not in (link.a, link.b)),
        )

    @property
    def sources(self) -> tuple[Device, ...]:
        """The sources of a cluster of several sources, in file order (else none)."""
        return tuple(d for d in self.devices if d.source)

    def view(self, source: str) -> Cluster:
        """The cluster as one source sees it: that source as the host, with every helper (the
        other sources are cameras of their own, not helpers)."""
        self.device(source)
        devices = [dataclasses.replace(d, host=d.name == source) for d in self.devices
                   if d.name == source or not d.source]
        devices.sort(key=lambda d: not d.host)
        names = {d.name for d in devices}
        return dataclasses.replace(self, devices=tuple(devices),
                                   links=tuple(l for l in self.links if {l.a, l.b} <= names))

    def device(self, name: str) -> Device:
        """The device called ``name``; :class:`HalpcError` if there is none."""
        for d in self.devices:
            if d.name == name:
                return d
        raise HalpcError(
            f"{self.source}: no device named {_show(name)} (known: {', '.join(self.names)}); "
            "use one of the names from the cluster file"
        )

    def link(self, a: str, b: str) -> Link:
        """The link between ``a`` and ``b``: the ``[[link]]`` override if any, else ``[network]``.

        Symmetric; the returned :class:`Link` has ``a`` and ``b`` in the order asked for.
        Asking for a device's link to itself, or naming an unknown device, is a
        :class:`HalpcError`.
        """
        self.device(a)
        self.device(b)
        if a == b:
            raise HalpcError(
                f"{self.source}: no link from device {_show(a)} to itself; "
                "data that stays on one device needs no transfer"
            )
        for link in self.links:
            if (link.a, link.b) == (a, b):
                return link
            if (link.a, link.b) == (b, a):
                return dataclasses.replace(link, a=a, b=b)
        return Link(a, b, self.network_bandwidth_mbps, self.network_latency_ms)

    # -- serialisation

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict in the same shape as the TOML file, every value explicit.

        Keys whose value is ``None`` (``gmacs`` / ``profile``) are left out, so the result
        is also valid TOML content.  ``source`` is not included; pass it to
        :meth:`from_dict`.
        """
        devices = []
        for d in self.devices:
            entry: dict[str, Any] = {"name": d.name, "address": d.address}
            if d.source:
                entry.update(source=True, model=d.model, rate_hz=d.rate_hz)
            else:
                entry["host"] = d.host
            if d.gmacs is not None:
                entry["gmacs"] = d.gmacs
            entry["threads"] = d.threads
            if d.arch is not None:
                entry["arch"] = d.arch
            if d.int8_gmacs is not None:
                entry["int8_gmacs"] = d.int8_gmacs
            if d.memory_mb is not None:
                entry["memory_mb"] = d.memory_mb
            if d.profile is not None:
                entry["profile"] = d.profile
            devices.append(entry)
        return {
            "network": {
                "bandwidth_mbps": self.network_bandwidth_mbps,
                "latency_ms": self.network_latency_ms,
            },
            "device": devices,
            "link": [
                {
                    "between": [l.a, l.b],
                    "bandwidth_mbps": l.bandwidth_mbps,
                    "latency_ms": l.latency_ms,
                }
                for l in self.links
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> Cluster:
        """Rebuild a cluster from :meth:`to_dict` output (or a parsed TOML document).

        The dict is validated exactly like a cluster file (``None`` counts as absent);
        relative ``profile`` paths are kept as they are.
        """
        return _build(d, source, None)


# --------------------------------------------------------------------------- loading


def load_cluster(path: str | os.PathLike[str]) -> Cluster:
    """Read and validate the cluster file at ``path``.

    Error messages name the file as ``path`` was given; ``profile`` paths are resolved
    against the file's folder.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise HalpcError(
            f"{source}: cluster file not found; check the path "
            "(see examples/cluster_local3.toml for the format)"
        ) from None
    except IsADirectoryError:
        raise HalpcError(f"{source}: is a folder, not a cluster file; give the path of the .toml file") from None
    except OSError as e:
        raise HalpcError(f"{source}: cannot read cluster file: {_one_line(e.strerror or str(e))}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HalpcError(
            f"{source}: not UTF-8 text (bad byte at offset {e.start}); save the cluster file as UTF-8"
        ) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return parse_cluster(text, source=source, base_dir=base_dir)


def parse_cluster(
    text: str, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Cluster:
    """Parse and validate cluster-file TOML ``text``.

    ``source`` names the text in error messages.  Relative ``profile`` paths are joined to
    ``base_dir`` when it is given, and kept as written otherwise.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HalpcError(f"{source}: invalid TOML: {_one_line(str(e))}; fix the syntax there") from None
    return _build(doc, source, base_dir)


def _build(doc: Any, source: str, base_dir: str | os.PathLike[str] | None) -> Cluster:
    """The Cluster of a parsed document: validated (:mod:`halpc.inputs.cluster_schema`), paths
    resolved against ``base_dir``, a cluster of sources led by its first source, host first."""
    valid = validate_cluster(doc, source)
    net = valid.network
    devices = [Device(d.name, d.host, d.address, d.gmacs, d.threads, _resolve(d.profile, base_dir), d.source,
                      _resolve(d.model, base_dir), d.rate_hz, d.arch, d.int8_gmacs, d.memory_mb)
               for d in valid.device]
    sources = [d for d in devices if d.source]
    if sources:  # the first source stands as the host of the whole (`Cluster.view` gives each its own)
        devices[devices.index(sources[0])] = dataclasses.replace(sources[0], host=True)
    links = tuple(Link(*l.between, net.bandwidth_mbps if l.bandwidth_mbps is None else l.bandwidth_mbps,
                       net.latency_ms if l.latency_ms is None else l.latency_ms) for l in valid.link)
    ordered = tuple([d for d in devices if d.host] + [d for d in devices if not d.host])
    return Cluster(ordered, net.bandwidth_mbps, net.latency_ms, links, source)


def _resolve(path: str | None, base_dir: str | os.PathLike[str] | None) -> str | None:
    """A profile or model path: ``~`` expanded, relative to the cluster file's folder if known."""
    if path is None:
        return None
    path = os.path.expanduser(path)
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.normpath(os.path.join(os.fspath(base_dir), path))
    return path
