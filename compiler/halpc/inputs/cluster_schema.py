"""The cluster file's schema: pydantic models for its shape, plain code for the rules between fields.

:func:`validate_cluster` checks a parsed cluster document in two steps. The models check every
table on its own: known keys only (a typo gets "did you mean ...?"), types (TOML's ``true`` is
not a number, ``2.0`` is not a thread count), ranges, device names that are safe folder names,
addresses that are ``HOST:PORT``. Then :func:`_check_relations` checks what needs several fields
or tables: one host or several sources, distinct names and addresses, a source's model and frame
rate, links between known devices. Either step raises a one-line
:class:`~halpc.errors.HalpcError` naming the file and the field, counting devices and links from 1
in file order (``device[2]`` is the second ``[[device]]`` table), as people count them.

``None`` counts as absent (a dict rebuilt from JSON may spell a missing value so).
"""
from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from halpc.errors import HalpcError
from halpc.inputs.schema import Rule, check_keys, clip, one_line, one_line_error

DEFAULT_BANDWIDTH_MBPS: float = 100.0
"""Bandwidth for every pair of devices when ``[network]`` (or its key) is left out."""

DEFAULT_LATENCY_MS: float = 2.0
"""One-way latency for every pair of devices when ``[network]`` (or its key) is left out."""

RESERVED_NAMES = frozenset(("keys", "manifest.json", "plan.json", "reference"))  # keys: in a device folder
_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"  # a folder name, and part of file names
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")
_DOTTED_RE = re.compile(r"[0-9.]+\Z")


# --------------------------------------------------------------------------- addresses


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
        raise ValueError(f"'{host}' is a listen-on-all address, not one other devices can connect to")
    if not _PORT_RE.match(port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    return host, port


def _check_hostname(host: str) -> None:
    if len(host) > 253:
        raise ValueError("host name is longer than 253 characters")
    for label in host.split("."):
        if not label:
            raise ValueError(f"'{host}' has an empty part between dots")
        if len(label) > 63 or not _LABEL_RE.match(label):
            raise ValueError(f"'{host}' is not a valid host name")


def _address_key(address: str) -> tuple[str, int]:
    """One spelling per address (IP notation, host name case), to find two devices at one."""
    host, port = parse_address(address)
    try:
        return ipaddress.ip_address(host).compressed, port
    except ValueError:
        return host.lower(), port


def _valid_address(address: str) -> str:
    parse_address(address)
    return address


def _a_path(path: str) -> str:
    if not path.strip():
        raise ValueError("is blank")
    return path


# --------------------------------------------------------------------------- the models

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FilePath = Annotated[str, AfterValidator(_a_path)]


class _Table(BaseModel):
    """A TOML table: strict types (no "8" for 8, no true for 1), known keys only, None absent."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys_none_absent(cls, data: Any) -> Any:
        check_keys(cls, data)
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, Mapping) else data


class Network(_Table):
    bandwidth_mbps: Positive = DEFAULT_BANDWIDTH_MBPS
    latency_ms: NonNegative = DEFAULT_LATENCY_MS


class DeviceEntry(_Table):
    """One ``[[device]]``; fields in the order their errors are reported."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    host: bool = False
    address: Annotated[str, AfterValidator(_valid_address)]
    profile: FilePath | None = None
    gmacs: Positive | None = None  # required unless there is a profile (a relation)
    int8_gmacs: Positive | None = None
    memory_mb: Positive | None = None
    threads: Annotated[int, Field(ge=1)] = 1
    arch: Literal["x86_64", "x86_64-nonchwc", "aarch64"] | None = None
    source: bool = False
    model: FilePath | None = None  # a source's (relations)
    rate_hz: Positive | None = None


class LinkEntry(_Table):
    between: Annotated[list[str], Field(min_length=2, max_length=2)]
    bandwidth_mbps: Positive | None = None  # None: the [network] value
    latency_ms: NonNegative | None = None


class ClusterDoc(_Table):
    network: Network = Field(default_factory=Network)
    device: Annotated[list[DeviceEntry], Field(min_length=1)]
    link: list[LinkEntry] = Field(default_factory=list)


_BANDWIDTH = Rule("must be a positive number, got {got}; give megabits per second, e.g. bandwidth_mbps = 100")
_LATENCY = Rule("must be a number >= 0, got {got}; give one-way milliseconds, e.g. latency_ms = 2")
_NO_DEVICES = "no devices; add one [[device]] table per machine, exactly one of them with host = true"

RULES: dict[str, Rule] = {
    "": Rule("must be a table, got {got}; give [network], [[device]] and [[link]] sections"),
    "network": Rule("must be a table, got {got}; write a [network] section with bandwidth_mbps and latency_ms"),
    "network.bandwidth_mbps": _BANDWIDTH,
    "network.latency_ms": _LATENCY,
    "device": Rule("must be an array of tables, got {got}; write [[device]] with double brackets, one per machine",
                   missing=_NO_DEVICES, empty=_NO_DEVICES),
    "device[]": Rule("must be a table, got {got}; write one [[device]] section per machine"),
    "device[].name": Rule("must be a safe folder name, got {got}; use at most 64 letters, digits, '-', '_' and '.', "
                          "not starting with '.'", missing='missing; give every device a name, e.g. name = "pi-2"'),
    "device[].host": Rule("must be true or false, got {got}; write host = true on the host only"),
    "device[].address": Rule("invalid address {got} ({why}); write HOST:PORT (IPv4, hostname or [IPv6]) with a port "
                             "in 1..65535", missing="missing; give the HOST:PORT other devices reach it at, "
                                                    'e.g. address = "192.168.1.11:5700"'),
    "device[].profile": Rule("must be a file path, got {got}; give the path of a device profile JSON, relative to "
                             "the cluster file"),
    "device[].gmacs": Rule("must be a positive number, got {got}; give the sustained conv throughput in GMAC/s, "
                           "e.g. gmacs = 8.0"),
    "device[].int8_gmacs": Rule("must be a positive number, got {got}; give the sustained int8 conv throughput in "
                                "GMAC/s (quantized models), e.g. int8_gmacs = 20.0"),
    "device[].memory_mb": Rule("must be a positive number, got {got}; give the memory halpc may use on the board in "
                               "MB (what is free with its other work running), e.g. memory_mb = 700"),
    "device[].threads": Rule("must be a positive whole number, got {got}; give the ONNX Runtime intra-op thread "
                             "count, e.g. threads = 1"),
    "device[].arch": Rule("must be the device's target, got {got}; write arch = \"aarch64\" (Raspberry Pi, Jetson), "
                          "\"x86_64\" or \"x86_64-nonchwc\""),
    "device[].source": Rule("must be true or false, got {got}; write source = true on each camera"),
    "device[].model": Rule("must be the path of the source's ONNX model, got {got}; write e.g. "
                           'model = "mobilenet.onnx" (relative to the cluster file)'),
    "device[].rate_hz": Rule("must be a positive number, got {got}; give the source's frames per second, "
                             "e.g. rate_hz = 10"),
    "link": Rule("must be an array of tables, got {got}; write [[link]] with double brackets, one per pair"),
    "link[]": Rule("must be a table, got {got}; write one [[link]] section per pair"),
    "link[].between": Rule('must be two device names, got {got}; write e.g. between = ["host", "pi-2"]',
                           missing='missing; name the two devices, e.g. between = ["host", "pi-2"]'),
    "link[].bandwidth_mbps": _BANDWIDTH,
    "link[].latency_ms": _LATENCY,
}


# --------------------------------------------------------------------------- checking


def validate_cluster(doc: Any, source: str) -> ClusterDoc:
    """The checked document (paths still as written); a one-line HalpcError at the first mistake."""
    try:
        valid = ClusterDoc.model_validate(doc)
    except ValidationError as exc:
        raise one_line_error(exc, doc, source, RULES, show=show, first_index=1) from None
    _check_relations(valid, lambda field, problem: HalpcError(one_line(f"{source}: {field}: {problem}")))
    return valid


def _check_relations(doc: ClusterDoc, fail: Callable[[str, str], HalpcError]) -> None:
    """The rules between fields and tables, in file order, device by device, then link by link."""
    names: dict[str, tuple[str, str]] = {}  # casefolded name -> (field, name) of first use
    addresses: dict[tuple[str, int], str] = {}
    host_field: str | None = None
    for i, d in enumerate(doc.device, start=1):
        where = f"device[{i}]"
        folded = d.name.casefold()
        if folded in RESERVED_NAMES:
            raise fail(f"{where}.name", f"{show(d.name)} is the name of a file or folder of the bundle itself "
                                        f"({', '.join(sorted(RESERVED_NAMES))}); choose another device name")
        if folded in names:
            first_field, first_name = names[folded]
            case_note = "" if first_name == d.name else ", differing only in case, which collides as a folder name"
            raise fail(f"{where}.name", f"duplicate device name {show(d.name)} (already used by {first_field}"
                                        f"{case_note}); give every device a different name")
        names[folded] = (where, d.name)
        if d.host and host_field is not None:
            raise fail(f"{where}.host",
                       f"several hosts ({host_field} is already host = true); mark exactly one device as the host")
        host_field = where if d.host else host_field
        key = _address_key(d.address)
        if key in addresses:
            raise fail(f"{where}.address", f"duplicate address {show(d.address)} (already used by {addresses[key]}); "
                                           "every device needs its own HOST:PORT")
        addresses[key] = where
        if d.gmacs is None and d.profile is None:
            raise fail(f"{where}.gmacs", "missing; give the sustained conv throughput in GMAC/s (e.g. gmacs = 8.0) "
                                         'or a measured profile = "..."')
        _check_source(d, where, fail)
    if any(d.source for d in doc.device) and host_field is not None:
        raise fail(f"{host_field}.host", "a cluster of several sources has no host (each source is the host of "
                                         "its own frames); remove host = true or the sources")
    if host_field is None and not any(d.source for d in doc.device):
        raise fail("device", "no host; mark exactly one device with host = true (it holds the model input and "
                             "output), or several with source = true, model and rate_hz")
    _check_links(doc, fail)


def _check_source(d: DeviceEntry, where: str, fail: Callable[[str, str], HalpcError]) -> None:
    """A source has a model and a frame rate, and nothing else has."""
    if not d.source:
        for key, value in (("model", d.model), ("rate_hz", d.rate_hz)):
            if value is not None:
                raise fail(f"{where}.{key}",
                           "only a source has a model and a frame rate; add source = true or remove it")
        return
    for key, value in (("model", d.model), ("rate_hz", d.rate_hz)):
        if value is None:
            raise fail(f"{where}.{key}", RULES[f"device[].{key}"].text.format(got=show(None)))
    if d.host:
        raise fail(f"{where}.host", "a source is the host of its own frames; remove host = true")


def _check_links(doc: ClusterDoc, fail: Callable[[str, str], HalpcError]) -> None:
    """Each link joins two known, different devices, once, and overrides something."""
    known = [d.name for d in doc.device]
    pairs: dict[frozenset[str], str] = {}
    for i, link in enumerate(doc.link, start=1):
        where = f"link[{i}]"
        a, b = link.between
        for n in (a, b):
            if n not in known:
                raise fail(f"{where}.between", f"unknown device {show(n)} (known: {', '.join(known)}); "
                                               "name devices from the [[device]] sections")
        if a == b:
            raise fail(f"{where}.between", f"links device {show(a)} to itself; name two different devices")
        pair = frozenset((a, b))
        if pair in pairs:
            raise fail(f"{where}.between", f"the pair {show(a)} / {show(b)} already has a link ({pairs[pair]}); "
                                           "merge them into one [[link]]")
        pairs[pair] = where
        if link.bandwidth_mbps is None and link.latency_ms is None:
            raise fail(where, "overrides nothing; give bandwidth_mbps and/or latency_ms (or delete the [[link]])")


def show(value: Any) -> str:
    """A value as TOML would spell it, on one line and not too long."""
    if value is None:
        text = "nothing"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
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
    return clip(text)
