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
* Device names become folder names in the bundle, so they are compared case-insensitively
  for duplicates (``Pi-2`` and ``pi-2`` would collide on macOS/Windows file systems).
* Duplicate addresses are detected after normalising (case of host names, IP spelling, port
  number); different spellings of one machine (``localhost`` vs ``127.0.0.1``) are not.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from halpc.errors import HalpcError

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

DEFAULT_BANDWIDTH_MBPS: float = 100.0
"""Bandwidth for every pair of devices when ``[network]`` (or its key) is left out."""

DEFAULT_LATENCY_MS: float = 2.0
"""One-way latency for every pair of devices when ``[network]`` (or its key) is left out."""

_TOP_KEYS = ("device", "link", "network")
_NETWORK_KEYS = ("bandwidth_mbps", "latency_ms")
_DEVICE_KEYS = ("address", "gmacs", "host", "model", "name", "profile", "rate_hz", "source", "threads")
_LINK_KEYS = ("bandwidth_mbps", "between", "latency_ms")

_RESERVED_NAMES = frozenset(("keys", "manifest.json", "plan.json", "reference"))  # keys: in a device folder
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")  # a folder name, and part of file names
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")
_DOTTED_RE = re.compile(r"[0-9.]+\Z")


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


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` into ``(host, port)``; IPv6 hosts come back without brackets.

    Accepts ``IPv4:PORT``, ``hostname:PORT`` and ``[IPv6]:PORT`` with a port in 1..65535,
    and rejects unspecified (listen-on-all) addresses.  Raises :class:`ValueError` with the
    reason otherwise.
    """
    if not isinstance(address, str):
        raise ValueError("must be a string")
    if not address:
        raise ValueError("is empty")
    if any(c.isspace() for c in address):
        raise ValueError("must not contain spaces")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise ValueError("has '[' without a matching ']'")
        host, rest = address[1:close], address[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError("needs ':PORT' after the ']'")
        port_text = rest[1:]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' inside [...] is not an IPv6 address") from None
    else:
        if ":" not in address:
            raise ValueError("has no port")
        host, port_text = address.rsplit(":", 1)
        if ":" in host:
            raise ValueError("looks like an IPv6 address without brackets, write [ADDR]:PORT")
        if not host:
            raise ValueError("has no host before ':'")
        if _DOTTED_RE.match(host):
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"'{host}' is not a valid IPv4 address") from None
        else:
            _check_hostname(host)
    if ip is not None and ip.is_unspecified:
        raise ValueError(
            f"'{host}' is a listen-on-all address, not one other devices can connect to"
        )
    if not _PORT_RE.match(port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    return host, port


# --------------------------------------------------------------------------- validation


def _build(doc: Any, source: str, base_dir: str | os.PathLike[str] | None) -> Cluster:
    def fail(field: str, problem: str) -> HalpcError:
        return HalpcError(_one_line(f"{source}: {field}: {problem}"))

    if not isinstance(doc, Mapping):
        raise HalpcError(f"{source}: must be a table, got {_show(doc)}; give [network], [[device]] and [[link]] sections")
    for key in doc:
        if key not in _TOP_KEYS:
            raise HalpcError(_one_line(f"{source}: {_unknown_key_message(key, _TOP_KEYS, 'top-level key')}"))

    # [network]
    network = _absent_to_empty(doc.get("network"))
    if not isinstance(network, Mapping):
        raise fail("network", f"must be a table, got {_show(network)}; write a [network] section with bandwidth_mbps and latency_ms")
    _check_keys(network, _NETWORK_KEYS, "network", fail)
    net_bw = _bandwidth(network.get("bandwidth_mbps"), "network.bandwidth_mbps", fail)
    net_lat = _latency(network.get("latency_ms"), "network.latency_ms", fail)
    if net_bw is None:
        net_bw = DEFAULT_BANDWIDTH_MBPS
    if net_lat is None:
        net_lat = DEFAULT_LATENCY_MS

    # [[device]]
    raw_devices = doc.get("device")
    if raw_devices is None or (isinstance(raw_devices, list) and not raw_devices):
        raise fail(
            "device",
            "no devices; add one [[device]] table per machine, exactly one of them with host = true",
        )
    if not isinstance(raw_devices, list):
        raise fail("device", f"must be an array of tables, got {_show(raw_devices)}; write [[device]] with double brackets, one per machine")

    devices: list[Device] = []
    names: dict[str, tuple[str, str]] = {}  # casefolded name -> (field, name) of first use
    addresses: dict[tuple[str, int], str] = {}
    host_field: str | None = None
    for i, entry in enumerate(raw_devices, start=1):
        where = f"device[{i}]"
        if not isinstance(entry, Mapping):
            raise fail(where, f"must be a table, got {_show(entry)}; write one [[device]] section per machine")
        _check_keys(entry, _DEVICE_KEYS, where, fail)

        name = entry.get("name")
        if name is None:
            raise fail(f"{where}.name", 'missing; give every device a name, e.g. name = "pi-2"')
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(
                f"{where}.name",
                f"must be a safe folder name, got {_show(name)}; use at most 64 letters, digits, '-', '_' and '.', not starting with '.'",
            )
        folded = name.casefold()
        if folded in _RESERVED_NAMES:
            raise fail(
                f"{where}.name",
                f"{_show(name)} is the name of a file or folder of the bundle itself "
                f"({', '.join(sorted(_RESERVED_NAMES))}); choose another device name",
            )
        if folded in names:
            first_field, first_name = names[folded]
            case_note = "" if first_name == name else ", differing only in case, which collides as a folder name"
            raise fail(
                f"{where}.name",
                f"duplicate device name {_show(name)} (already used by {first_field}{case_note}); "
                "give every device a different name",
            )
        names[folded] = (where, name)

        is_host = entry.get("host", False)
        if is_host is None:
            is_host = False
        if not isinstance(is_host, bool):
            raise fail(f"{where}.host", f"must be true or false, got {_show(is_host)}; write host = true on the host only")
        if is_host:
            if host_field is not None:
                raise fail(
                    f"{where}.host",
                    f"several hosts ({host_field} is already host = true); mark exactly one device as the host",
                )
            host_field = where

        address = entry.get("address")
        if address is None:
            raise fail(f"{where}.address", 'missing; give the HOST:PORT other devices reach it at, e.g. address = "192.168.1.11:5700"')
        try:
            addr_host, addr_port = parse_address(address)
        except ValueError as e:
            raise fail(
                f"{where}.address",
                f"invalid address {_show(address)} ({e}); write HOST:PORT (IPv4, hostname or [IPv6]) with a port in 1..65535",
            ) from None
        key = (_normalise_host(addr_host), addr_port)
        if key in addresses:
            raise fail(
                f"{where}.address",
                f"duplicate address {_show(address)} (already used by {addresses[key]}); every device needs its own HOST:PORT",
            )
        addresses[key] = where

        profile = entry.get("profile")
        if profile is not None:
            if not isinstance(profile, str) or not profile.strip():
                raise fail(f"{where}.profile", f"must be a file path, got {_show(profile)}; give the path of a device profile JSON, relative to the cluster file")
            profile = os.path.expanduser(profile)
            if base_dir is not None and not os.path.isabs(profile):
                profile = os.path.normpath(os.path.join(os.fspath(base_dir), profile))

        gmacs_raw = entry.get("gmacs")
        if gmacs_raw is None:
            if profile is None:
                raise fail(
                    f"{where}.gmacs",
                    "missing; give the sustained conv throughput in GMAC/s (e.g. gmacs = 8.0) or a measured profile = \"...\"",
                )
            gmacs = None
        else:
            gmacs = _positive(gmacs_raw, f"{where}.gmacs", "give the sustained conv throughput in GMAC/s, e.g. gmacs = 8.0", fail)

        threads = entry.get("threads", 1)
        if threads is None:
            threads = 1
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise fail(
                f"{where}.threads",
                f"must be a positive whole number, got {_show(threads)}; give the ONNX Runtime intra-op thread count, e.g. threads = 1",
            )

        is_source, model, rate_hz = _source_fields(entry, where, base_dir, fail)
        if is_source and is_host:
            raise fail(f"{where}.host", "a source is the host of its own frames; remove host = true")
        devices.append(Device(name, is_host, address, gmacs, threads, profile, is_source, model, rate_hz))

    sources = [d for d in devices if d.source]
    if sources and host_field is not None:
        raise fail(f"{host_field}.host", "a cluster of several sources has no host (each source is the host of "
                                         "its own frames); remove host = true or the sources")
    if sources:  # the first source stands as the host of the whole (`Cluster.view` gives each its own)
        devices[devices.index(sources[0])] = dataclasses.replace(sources[0], host=True)
    elif host_field is None:
        raise fail("device", "no host; mark exactly one device with host = true (it holds the model input and "
                             "output), or several with source = true, model and rate_hz")

    # [[link]]
    raw_links = _absent_to_list(doc.get("link"))
    if not isinstance(raw_links, list):
        raise fail("link", f"must be an array of tables, got {_show(raw_links)}; write [[link]] with double brackets, one per pair")
    known = [d.name for d in devices]
    links: list[Link] = []
    pairs: dict[frozenset[str], str] = {}
    for i, entry in enumerate(raw_links, start=1):
        where = f"link[{i}]"
        if not isinstance(entry, Mapping):
            raise fail(where, f"must be a table, got {_show(entry)}; write one [[link]] section per pair")
        _check_keys(entry, _LINK_KEYS, where, fail)
        between = entry.get("between")
        if between is None:
            raise fail(f"{where}.between", 'missing; name the two devices, e.g. between = ["host", "pi-2"]')
        if (
            not isinstance(between, list)
            or len(between) != 2
            or not all(isinstance(n, str) for n in between)
        ):
            raise fail(f"{where}.between", f'must be two device names, got {_show(between)}; write e.g. between = ["host", "pi-2"]')
        a, b = between
        for n in (a, b):
            if n not in known:
                raise fail(
                    f"{where}.between",
                    f"unknown device {_show(n)} (known: {', '.join(known)}); name devices from the [[device]] sections",
                )
        if a == b:
            raise fail(f"{where}.between", f"links device {_show(a)} to itself; name two different devices")
        pair = frozenset((a, b))
        if pair in pairs:
            raise fail(
                f"{where}.between",
                f"the pair {_show(a)} / {_show(b)} already has a link ({pairs[pair]}); merge them into one [[link]]",
            )
        pairs[pair] = where
        bw = _bandwidth(entry.get("bandwidth_mbps"), f"{where}.bandwidth_mbps", fail)
        lat = _latency(entry.get("latency_ms"), f"{where}.latency_ms", fail)
        if bw is None and lat is None:
            raise fail(
                where,
                "overrides nothing; give bandwidth_mbps and/or latency_ms (or delete the [[link]])",
            )
        links.append(Link(a, b, net_bw if bw is None else bw, net_lat if lat is None else lat))

    ordered = tuple([d for d in devices if d.host] + [d for d in devices if not d.host])
    return Cluster(ordered, net_bw, net_lat, tuple(links), source)


def _source_fields(entry: Mapping[str, Any], where: str, base_dir: str | os.PathLike[str] | None,
                   fail: Any) -> tuple[bool, str | None, float | None]:
    """`source`, `model` (resolved against the file's folder) and `rate_hz` of a device."""
    is_source = entry.get("source", False)
    if is_source is None:
        is_source = False
    if not isinstance(is_source, bool):
        raise fail(f"{where}.source", f"must be true or false, got {_show(is_source)}; write source = true on each camera")
    model, rate = entry.get("model"), entry.get("rate_hz")
    if not is_source:
        for key, value in (("model", model), ("rate_hz", rate)):
            if value is not None:
                raise fail(f"{where}.{key}", "only a source has a model and a frame rate; add source = true or remove it")
        return False, None, None
    if not isinstance(model, str) or not model.strip():
        raise fail(f"{where}.model", f"must be the path of the source's ONNX model, got {_show(model)}; "
                                     'write e.g. model = "mobilenet.onnx" (relative to the cluster file)')
    model = os.path.expanduser(model)
    if base_dir is not None and not os.path.isabs(model):
        model = os.path.normpath(os.path.join(os.fspath(base_dir), model))
    rate_hz = _positive(rate, f"{where}.rate_hz", "give the source's frames per second, e.g. rate_hz = 10", fail)
    return True, model, rate_hz


def _check_keys(table: Mapping[str, Any], known: Iterable[str], where: str, fail: Any) -> None:
    known = tuple(known)
    for key in table:
        if key not in known:
            raise fail(where, _unknown_key_message(key, known, "field"))


def _unknown_key_message(key: str, known: tuple[str, ...], what: str) -> str:
    message = f"unknown {what} {_show_key(key)} (known: {', '.join(sorted(known))})"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean '{close[0]}'?"
    else:
        message += "; remove it or fix its spelling"
    return message


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any, field: str, hint: str, fail: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise fail(field, f"must be a positive number, got {_show(value)}; {hint}")
    return float(value)


def _bandwidth(value: Any, field: str, fail: Any) -> float | None:
    if value is None:
        return None
    return _positive(value, field, "give megabits per second, e.g. bandwidth_mbps = 100", fail)


def _latency(value: Any, field: str, fail: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise fail(field, f"must be a number >= 0, got {_show(value)}; give one-way milliseconds, e.g. latency_ms = 2")
    return float(value)


def _absent_to_empty(value: Any) -> Any:
    return {} if value is None else value


def _absent_to_list(value: Any) -> Any:
    return [] if value is None else value


def _check_hostname(host: str) -> None:
    if len(host) > 253:
        raise ValueError("host name is longer than 253 characters")
    for label in host.split("."):
        if not label:
            raise ValueError(f"'{host}' has an empty part between dots")
        if len(label) > 63 or not _LABEL_RE.match(label):
            raise ValueError(f"'{host}' is not a valid host name")


def _normalise_host(host: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _show(value: Any) -> str:
    """A value as TOML would spell it, on one line and not too long."""
    if value is None:
        text = "nothing"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "a table"
    elif isinstance(value, list):
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = "an array"
    else:
        text = f"a {type(value).__name__}"
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def _show_key(key: Any) -> str:
    return f"'{key}'" if isinstance(key, str) and key.isprintable() and "'" not in key else _show(str(key))


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)
