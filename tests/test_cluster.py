"""Tests for halpc.inputs.cluster: parsing, lookups, round-trip, and one-line error messages."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from halpc.inputs.cluster import (
    DEFAULT_BANDWIDTH_MBPS,
    DEFAULT_LATENCY_MS,
    Cluster,
    Device,
    Link,
    load_cluster,
    parse_address,
    parse_cluster,
)
from halpc.errors import HalpcError

REPO = Path(__file__).resolve().parent.parent

EXAMPLE = """\
[network]                 # default for every pair of devices
bandwidth_mbps = 100
latency_ms = 2

[[device]]
name = "host"             # exactly one host: it holds the input and the output
host = true
address = "127.0.0.1:5701"
gmacs = 8.0               # sustained conv throughput, GMAC/s
threads = 1               # ONNX Runtime intra-op threads on this device

[[device]]
name = "pi-2"
address = "127.0.0.1:5702"
gmacs = 8.0

[[link]]                  # optional override for one pair (symmetric)
between = ["host", "pi-2"]
bandwidth_mbps = 50
# latency_ms = 5  (optional; default from [network])
"""

HOST = '[[device]]\nname = "host"\nhost = true\naddress = "127.0.0.1:5701"\ngmacs = 8.0\n'
PI2 = '[[device]]\nname = "pi-2"\naddress = "127.0.0.1:5702"\ngmacs = 8.0\n'
PI3 = '[[device]]\nname = "pi-3"\naddress = "127.0.0.1:5703"\ngmacs = 8.0\n'
NET = "[network]\nbandwidth_mbps = 100\nlatency_ms = 2\n"


def write(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[str, str]:
    """Load ``text`` from a file, expect HalpcError; return (message, source prefix)."""
    path = write(tmp_path, text)
    with pytest.raises(HalpcError) as info:
        load_cluster(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message, f"{path}: "


# --------------------------------------------------------------------------- happy path


def test_example_parses_with_right_values(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, EXAMPLE))
    assert cluster.source == str(tmp_path / "cluster.toml")
    assert len(cluster) == 2
    assert cluster.names == ("host", "pi-2")
    assert cluster.network_bandwidth_mbps == 100.0
    assert cluster.network_latency_ms == 2.0
    assert cluster.host == Device("host", True, "127.0.0.1:5701", 8.0, 1, None)
    assert cluster.secondaries == (Device("pi-2", False, "127.0.0.1:5702", 8.0, 1, None),)
    assert cluster.device("pi-2").threads == 1  # default
    assert isinstance(cluster.host.gmacs, float)
    assert cluster.links == (Link("host", "pi-2", 50.0, 2.0),)


def test_link_override_default_and_symmetry() -> None:
    cluster = parse_cluster(EXAMPLE + PI3)
    assert cluster.link("host", "pi-2") == Link("host", "pi-2", 50.0, 2.0)
    assert cluster.link("pi-2", "host") == Link("pi-2", "host", 50.0, 2.0)
    # No override: the [network] default, in the order asked for.
    assert cluster.link("pi-3", "pi-2") == Link("pi-3", "pi-2", 100.0, 2.0)
    assert cluster.link("host", "pi-3") == Link("host", "pi-3", 100.0, 2.0)


def test_link_latency_only_override_takes_bandwidth_from_network() -> None:
    text = NET + HOST + PI2 + '[[link]]\nbetween = ["pi-2", "host"]\nlatency_ms = 7.5\n'
    cluster = parse_cluster(text)
    assert cluster.link("host", "pi-2") == Link("host", "pi-2", 100.0, 7.5)


def test_link_to_itself_or_unknown_device_is_an_error() -> None:
    cluster = parse_cluster(EXAMPLE)
    with pytest.raises(HalpcError, match="itself"):
        cluster.link("pi-2", "pi-2")
    with pytest.raises(HalpcError, match="no device named \"nope\""):
        cluster.link("host", "nope")
    with pytest.raises(HalpcError, match=r"known: host, pi-2"):
        cluster.device("nope")


def test_network_section_is_optional_with_documented_defaults() -> None:
    cluster = parse_cluster(HOST + PI2)
    assert (cluster.network_bandwidth_mbps, cluster.network_latency_ms) == (100.0, 2.0)
    assert (DEFAULT_BANDWIDTH_MBPS, DEFAULT_LATENCY_MS) == (100.0, 2.0)
    partial = parse_cluster("[network]\nlatency_ms = 0\n" + HOST + PI2)
    assert (partial.network_bandwidth_mbps, partial.network_latency_ms) == (100.0, 0.0)


def test_host_is_listed_first_and_others_keep_file_order() -> None:
    cluster = parse_cluster(PI3 + PI2 + HOST)
    assert cluster.names == ("host", "pi-3", "pi-2")
    assert cluster.devices[0] is cluster.host
    assert [d.name for d in cluster.secondaries] == ["pi-3", "pi-2"]


def test_single_device_cluster_is_allowed() -> None:
    cluster = parse_cluster(HOST)
    assert len(cluster) == 1 and cluster.secondaries == ()


def test_int_values_become_floats_and_ipv6_hostname_addresses() -> None:
    text = (
        '[network]\nbandwidth_mbps = 1000\nlatency_ms = 1\n'
        '[[device]]\nname = "h"\nhost = true\naddress = "[::1]:5701"\ngmacs = 3\nthreads = 4\n'
        '[[device]]\nname = "b.local_1"\naddress = "pi-2.local:65535"\ngmacs = 0.5\n'
    )
    cluster = parse_cluster(text)
    assert cluster.network_bandwidth_mbps == 1000.0 and isinstance(cluster.network_bandwidth_mbps, float)
    assert cluster.host.gmacs == 3.0 and isinstance(cluster.host.gmacs, float)
    assert cluster.host.threads == 4
    assert cluster.device("b.local_1").address == "pi-2.local:65535"


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:5701") == ("127.0.0.1", 5701)
    assert parse_address("pi-2.local:1") == ("pi-2.local", 1)
    assert parse_address("[fe80::1]:65535") == ("fe80::1", 65535)
    for bad in ["", "host", "host:", ":80", "1.2.3:80", "256.1.1.1:80", "::1:80", "[::1]80",
                "[nope]:80", "a b:80", "h:0", "h:65536", "h:-1", "h:+5", "0.0.0.0:80", "[::]:80",
                "-bad:80", "a..b:80"]:
        with pytest.raises(ValueError):
            parse_address(bad)


def test_profile_is_resolved_relative_to_the_cluster_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    text = HOST + '[[device]]\nname = "pi-2"\naddress = "127.0.0.1:5702"\nprofile = "profiles/pi4.json"\n'
    cluster = load_cluster(write(sub, text))
    pi2 = cluster.device("pi-2")
    assert pi2.gmacs is None
    assert pi2.profile == os.path.normpath(str(sub / "profiles" / "pi4.json"))
    # parse_cluster without base_dir keeps the path as written; with it, joins.
    assert parse_cluster(text).device("pi-2").profile == "profiles/pi4.json"
    assert parse_cluster(text, base_dir="/x").device("pi-2").profile == os.path.normpath("/x/profiles/pi4.json")
    # gmacs and profile together are allowed (gmacs as the fallback estimate).
    both = parse_cluster(HOST + PI2.replace("gmacs = 8.0", 'gmacs = 8.0\nprofile = "/abs/p.json"'))
    assert both.device("pi-2").gmacs == 8.0 and both.device("pi-2").profile == "/abs/p.json"


def test_to_dict_from_dict_round_trip() -> None:
    cluster = parse_cluster(PI3 + EXAMPLE.replace('gmacs = 8.0\n\n[[link]]', 'profile = "/p/pi.json"\n\n[[link]]'), source="c.toml")
    d = cluster.to_dict()
    again = Cluster.from_dict(json.loads(json.dumps(d)), source="c.toml")
    assert again == cluster
    assert again.to_dict() == d
    assert Cluster.from_dict(d).source == "<dict>"
    assert d["device"][0]["name"] == "host"
    assert d["link"] == [{"between": ["host", "pi-2"], "bandwidth_mbps": 50.0, "latency_ms": 2.0}]
    # from_dict validates like the file loader.
    bad = json.loads(json.dumps(d))
    bad["device"][1]["gmacs"] = -3
    with pytest.raises(HalpcError, match=r"^manifest: device\[2\]\.gmacs: must be a positive number"):
        Cluster.from_dict(bad, source="manifest")


def test_dataclasses_are_frozen_and_cluster_checks_invariants() -> None:
    cluster = parse_cluster(EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cluster.host.gmacs = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        Cluster(tuple(reversed(cluster.devices)), 100.0, 2.0, (), "x")


@pytest.mark.parametrize("name", ["cluster_local3.toml", "cluster_pis.toml"])
def test_example_files_load(name: str) -> None:
    cluster = load_cluster(REPO / "examples" / name)
    assert cluster.host.host
    assert len(cluster) in (3, 4)


def test_example_local3_values() -> None:
    cluster = load_cluster(REPO / "examples" / "cluster_local3.toml")
    assert [d.address for d in cluster.devices] == ["127.0.0.1:5701", "127.0.0.1:5702", "127.0.0.1:5703"]
    assert all(d.gmacs == 8.0 and d.threads == 1 for d in cluster.devices)
    assert (cluster.network_bandwidth_mbps, cluster.network_latency_ms) == (100.0, 2.0)
    assert cluster.links == ()


def test_example_pis_values() -> None:
    cluster = load_cluster(REPO / "examples" / "cluster_pis.toml")
    assert [d.address for d in cluster.devices] == [f"192.168.1.{i}:5700" for i in range(10, 14)]
    assert cluster.host.profile and cluster.host.profile.endswith("raspberry_pi_5.json")
    assert all(d.gmacs == 4.0 for d in cluster.secondaries)
    assert cluster.device("pi-2").memory_mb == 150
    assert (cluster.network_bandwidth_mbps, cluster.network_latency_ms) == (50.0, 3.0)
    for other in ("pi-host", "pi-1", "pi-2"):  # pi-3 is behind the weak links
        assert cluster.link("pi-3", other).bandwidth_mbps == cluster.link(other, "pi-3").bandwidth_mbps == 8.0
    assert cluster.link("pi-1", "pi-2").bandwidth_mbps == 50.0


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(HalpcError) as info:
        load_cluster(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "not found" in message and "\n" not in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(HalpcError, match="folder"):
        load_cluster(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b'[network]\n# caf\xe9\n')
    with pytest.raises(HalpcError, match="UTF-8"):
        load_cluster(path)


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    message, prefix = load_error(tmp_path, NET + HOST + "gmacs = \n")
    assert message.startswith(prefix + "invalid TOML: ")
    assert "line 9, column 9" in message


def test_invalid_toml_from_string_names_source() -> None:
    with pytest.raises(HalpcError, match=r"^<string>: invalid TOML: .*line 1"):
        parse_cluster("[[device]\n")


def test_unknown_device_field_message_is_exactly_as_specified(tmp_path: Path) -> None:
    message, prefix = load_error(tmp_path, HOST.replace("gmacs", "gmac"))
    assert message.startswith(
        prefix + "device[1]: unknown field 'gmac' (known: address, arch, gmacs, host, int8_gmacs, memory_mb, model, name, profile, rate_hz, source, threads)"
    )
    assert "did you mean 'gmacs'" in message


# (case id, TOML text, field named right after the file name, a word the message must contain)
ERROR_CASES = [
    ("no-devices", NET, "device", "no devices"),
    ("empty-device-array", "device = []\n" + NET, "device", "no devices"),
    ("device-single-brackets", NET + '[device]\nname = "h"\n', "device", "[[device]]"),
    ("device-not-table", "device = [1]\n" + NET, "device[1]", "table"),
    ("missing-name", HOST + '[[device]]\naddress = "127.0.0.1:5702"\ngmacs = 1\n', "device[2].name", "missing"),
    ("name-not-string", HOST + PI2.replace('"pi-2"', "2"), "device[2].name", "safe folder name"),
    ("name-with-slash", HOST + PI2.replace('"pi-2"', '"pi/2"'), "device[2].name", "safe folder name"),
    ("name-with-space", HOST + PI2.replace('"pi-2"', '"pi 2"'), "device[2].name", "safe folder name"),
    ("name-leading-dot", HOST + PI2.replace('"pi-2"', '".pi"'), "device[2].name", "safe folder name"),
    ("name-dotdot", HOST + PI2.replace('"pi-2"', '".."'), "device[2].name", "safe folder name"),
    ("name-empty", HOST + PI2.replace('"pi-2"', '""'), "device[2].name", "safe folder name"),
    ("name-non-ascii", HOST + PI2.replace('"pi-2"', '"pï"'), "device[2].name", "safe folder name"),
    ("duplicate-name", HOST + PI2 + PI3.replace("pi-3", "pi-2"), "device[3].name", "duplicate"),
    ("duplicate-name-case", HOST + PI2 + PI3.replace("pi-3", "PI-2"), "device[3].name", "only in case"),
    ("no-host", PI2 + PI3, "device", "no host"),
    ("host-false-only", HOST.replace("true", "false") + PI2, "device", "no host"),
    ("several-hosts", HOST + PI2.replace('name = "pi-2"', 'name = "pi-2"\nhost = true'), "device[2].host", "several hosts"),
    ("host-not-bool", HOST.replace("true", '"yes"'), "device[1].host", "true or false"),
    ("missing-address", HOST + '[[device]]\nname = "pi-2"\ngmacs = 1\n', "device[2].address", "missing"),
    ("address-no-port", HOST + PI2.replace("127.0.0.1:5702", "127.0.0.1"), "device[2].address", "no port"),
    ("address-port-zero", HOST + PI2.replace(":5702", ":0"), "device[2].address", "1..65535"),
    ("address-port-big", HOST + PI2.replace(":5702", ":70000"), "device[2].address", "1..65535"),
    ("address-port-text", HOST + PI2.replace(":5702", ":http"), "device[2].address", "not a number"),
    ("address-bad-ipv4", HOST + PI2.replace("127.0.0.1", "300.0.0.1"), "device[2].address", "IPv4"),
    ("address-bare-ipv6", HOST + PI2.replace("127.0.0.1:5702", "fe80::1:5702"), "device[2].address", "brackets"),
    ("address-bad-ipv6", HOST + PI2.replace("127.0.0.1:5702", "[fe80::zz]:5702"), "device[2].address", "IPv6"),
    ("address-bad-hostname", HOST + PI2.replace("127.0.0.1", "pi_2!"), "device[2].address", "host name"),
    ("address-wildcard", HOST + PI2.replace("127.0.0.1", "0.0.0.0"), "device[2].address", "listen-on-all"),
    ("address-not-string", HOST + PI2.replace('"127.0.0.1:5702"', "5702"), "device[2].address", "string"),
    ("duplicate-address", HOST + PI2.replace("5702", "5701"), "device[2].address", "duplicate address"),
    ("duplicate-address-normalised", HOST.replace("127.0.0.1", "[::1]") + PI2.replace("127.0.0.1:5702", "[0:0::0:1]:05701"),
     "device[2].address", "duplicate address"),
    ("address-leading-zero-ipv4", HOST + PI2.replace("127.0.0.1", "127.000.0.1"), "device[2].address", "IPv4"),
    ("duplicate-address-hostname-case",
     HOST.replace("127.0.0.1", "Pi.local") + PI2.replace("127.0.0.1:5702", "pi.LOCAL:5701"),
     "device[2].address", "duplicate address"),
    ("missing-gmacs", HOST + PI2.replace("gmacs = 8.0\n", ""), "device[2].gmacs", "missing"),
    ("gmacs-negative", HOST + PI2.replace("8.0", "-3"), "device[2].gmacs", "must be a positive number, got -3"),
    ("gmacs-zero", HOST + PI2.replace("8.0", "0"), "device[2].gmacs", "positive number"),
    ("gmacs-string", HOST + PI2.replace("8.0", '"8"'), "device[2].gmacs", 'got "8"'),
    ("gmacs-bool", HOST + PI2.replace("8.0", "true"), "device[2].gmacs", "got true"),
    ("gmacs-inf", HOST + PI2.replace("8.0", "inf"), "device[2].gmacs", "got inf"),
    ("gmacs-nan", HOST + PI2.replace("8.0", "nan"), "device[2].gmacs", "got nan"),
    ("profile-empty", HOST + PI2.replace("gmacs = 8.0", 'profile = ""'), "device[2].profile", "path"),
    ("profile-not-string", HOST + PI2.replace("gmacs = 8.0", "profile = 3"), "device[2].profile", "path"),
    ("threads-zero", HOST + PI2 + "threads = 0\n", "device[2].threads", "positive whole number"),
    ("threads-float", HOST + PI2 + "threads = 2.0\n", "device[2].threads", "got 2.0"),
    ("threads-bool", HOST + PI2 + "threads = true\n", "device[2].threads", "got true"),
    ("threads-string", HOST + PI2 + 'threads = "2"\n', "device[2].threads", "positive whole number"),
    ("network-not-table", "network = 5\n" + HOST, "network", "table"),
    ("network-bandwidth-zero", NET.replace("100", "0") + HOST, "network.bandwidth_mbps", "positive number"),
    ("network-bandwidth-bool", NET.replace("100", "true") + HOST, "network.bandwidth_mbps", "got true"),
    ("network-bandwidth-string", NET.replace("100", '"fast"'), "network.bandwidth_mbps", "positive number"),
    ("network-latency-negative", NET.replace("= 2", "= -1") + HOST, "network.latency_ms", ">= 0"),
    ("network-latency-bool", NET.replace("= 2", "= false") + HOST, "network.latency_ms", "got false"),
    ("network-unknown-key", NET + "bandwith_mbps = 3\n" + HOST, "network", "unknown field 'bandwith_mbps'"),
    ("link-unknown-key", EXAMPLE + "latency = 5\n", "link[1]", "unknown field 'latency'"),
    ("link-unknown-device", HOST + PI2 + '[[link]]\nbetween = ["host", "pi-9"]\nbandwidth_mbps = 5\n',
     "link[1].between", 'unknown device "pi-9"'),
    ("link-self", HOST + PI2 + '[[link]]\nbetween = ["pi-2", "pi-2"]\nbandwidth_mbps = 5\n',
     "link[1].between", "itself"),
    ("link-twice", EXAMPLE + '[[link]]\nbetween = ["pi-2", "host"]\nlatency_ms = 5\n',
     "link[2].between", "already has a link (link[1])"),
    ("link-no-values", HOST + PI2 + '[[link]]\nbetween = ["host", "pi-2"]\n', "link[1]", "bandwidth_mbps and/or latency_ms"),
    ("link-missing-between", HOST + PI2 + "[[link]]\nbandwidth_mbps = 5\n", "link[1].between", "missing"),
    ("link-between-one", HOST + PI2 + '[[link]]\nbetween = ["host"]\nbandwidth_mbps = 5\n', "link[1].between", "two device names"),
    ("link-between-string", HOST + PI2 + '[[link]]\nbetween = "host"\nbandwidth_mbps = 5\n', "link[1].between", "two device names"),
    ("link-bandwidth-negative", HOST + PI2 + '[[link]]\nbetween = ["host", "pi-2"]\nbandwidth_mbps = -5\n',
     "link[1].bandwidth_mbps", "positive number"),
    ("link-bandwidth-bool", HOST + PI2 + '[[link]]\nbetween = ["host", "pi-2"]\nbandwidth_mbps = true\n',
     "link[1].bandwidth_mbps", "got true"),
    ("link-latency-negative", HOST + PI2 + '[[link]]\nbetween = ["host", "pi-2"]\nlatency_ms = -0.5\n',
     "link[1].latency_ms", ">= 0"),
    ("link-single-brackets", HOST + PI2 + '[link]\nbetween = ["host", "pi-2"]\n', "link", "[[link]]"),
]


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_names_file_and_field_on_one_line(tmp_path: Path, text: str, field: str, needle: str) -> None:
    message, prefix = load_error(tmp_path, text)
    assert message.startswith(f"{prefix}{field}: "), message
    assert needle in message, message


def test_error_in_later_device_counts_from_one_in_file_order(tmp_path: Path) -> None:
    # device[3] is the third [[device]] table in the file, even though the host is moved first.
    message, prefix = load_error(tmp_path, PI2 + HOST + PI3.replace("8.0", "-1"))
    assert message.startswith(prefix + "device[3].gmacs: must be a positive number, got -1")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message, prefix = load_error(tmp_path, HOST.replace("[[device]]", "[[devices]]"))
    assert message.startswith(prefix + "unknown top-level key 'devices' (known: device, link, network)")
    assert "did you mean 'device'" in message


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    message, prefix = load_error(tmp_path, HOST + "colour = 'red'\n")
    assert message.startswith(prefix + "device[1]: unknown field 'colour'")
    assert "remove it" in message


def test_errors_from_string_use_given_source() -> None:
    with pytest.raises(HalpcError, match=r"^my\.toml: device\[1\]\.gmacs: "):
        parse_cluster(HOST.replace("8.0", "-1"), source="my.toml")
    with pytest.raises(HalpcError, match=r"^<string>: device: no devices"):
        parse_cluster("")


def test_from_dict_none_is_absent_but_an_unknown_key_is_refused() -> None:
    d = {"network": None, "link": None,
         "device": [{"name": "h", "host": True, "address": "h.local:1", "gmacs": 2, "threads": None, "profile": None}]}
    cluster = Cluster.from_dict(d)
    assert (cluster.network_bandwidth_mbps, cluster.host.threads, cluster.host.profile) == (100.0, 1, None)
    d["device"][0]["colour"] = None
    with pytest.raises(HalpcError, match=r"^<dict>: device\[1\]: unknown field 'colour'"):
        Cluster.from_dict(d)


def test_an_unknown_key_is_reported_before_the_other_errors_of_its_table(tmp_path: Path) -> None:
    # the typo is the cause: "gmacs missing" would send the user the wrong way
    message, prefix = load_error(tmp_path, HOST + PI2.replace("gmacs = 8.0", "gmac = 8.0\nthreads = 0"))
    assert message.startswith(prefix + "device[2]: unknown field 'gmac'"), message


def test_first_error_in_file_order(tmp_path: Path) -> None:
    message, prefix = load_error(tmp_path, HOST.replace("8.0", "0") + PI2.replace("gmacs = 8.0", "colour = 1"))
    assert message.startswith(prefix + "device[1].gmacs: must be a positive number, got 0"), message


@pytest.mark.parametrize(("text", "field", "needle"), [
    (HOST + PI2.replace('"pi-2"', '"pi-2\\n"'), "device[2].name", "safe folder name"),
    (HOST + PI2 + '[[link]]\nbetween = []\nbandwidth_mbps = 5\n', "link[1].between", "two device names, got []"),
    (HOST + PI2 + '[[link]]\nbetween = ["host", 3]\nbandwidth_mbps = 5\n', "link[1].between", 'got ["host", 3]'),
    ("link = [3]\n" + HOST + PI2, "link[1]", "must be a table, got 3"),
    (HOST + PI2 + 'source = 1\n', "device[2].source", "true or false, got 1"),
    (HOST + PI2 + 'rate_hz = 2\n', "device[2].rate_hz", "only a source"),
    (PI2.replace('name = "pi-2"', 'name = "pi-2"\nsource = true\nmodel = " "\nrate_hz = 3') + PI3,
     "device[1].model", "path of the source's ONNX model"),
])
def test_more_errors_name_the_field(tmp_path: Path, text: str, field: str, needle: str) -> None:
    message, prefix = load_error(tmp_path, text)
    assert message.startswith(f"{prefix}{field}: "), message
    assert needle in message, message
