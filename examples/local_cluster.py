"""Write a cluster file for this machine: one device per CPU core (the host and workers, each a
single-threaded process on 127.0.0.1), every device given the measured profile, and the
loopback link's measured goodput and latency as the network.

`make demo` uses it so that what the planner predicts is what this machine does: a cluster file
of imagined 8 GMAC/s boards predicts 687 ms where this machine measures 250, and three
processes on two cores cannot show a real gain.

Usage::

    halpc profile model.onnx -o profile.json
    python examples/local_cluster.py --profile profile.json -o cluster.toml [--devices N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zmq

BASE_PORT = 5701


def loopback_link(megabytes: int = 64, rounds: int = 200) -> tuple[float, float]:
    """(goodput Mbit/s, one-way latency ms) of TCP over 127.0.0.1 through ZeroMQ, as the stubs
    use it: 1 MB messages for the rate, the median of small round trips halved for the latency."""
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        chunk = np.ones(1 << 20, np.uint8)
        push.send(chunk)
        pull.recv()
        start = time.perf_counter()
        for _ in range(megabytes):
            push.send(chunk, copy=False)
            pull.recv(copy=False)
        mbps = megabytes * 8 * (1 << 20) / 1e6 / (time.perf_counter() - start)
        back = context.socket(zmq.PUSH)
        ret = context.socket(zmq.PULL)
        ret_port = ret.bind_to_random_port("tcp://127.0.0.1")
        back.connect(f"tcp://127.0.0.1:{ret_port}")
        trips = []
        for _ in range(rounds):
            at = time.perf_counter()
            push.send(b"x")
            back.send(pull.recv())
            ret.recv()
            trips.append(time.perf_counter() - at)
        back.close(0)
        ret.close(0)
        return mbps, statistics.median(trips) / 2 * 1e3
    finally:
        context.destroy(linger=0)


def cluster_text(devices: int, profile: str, mbps: float, latency_ms: float) -> str:
    lines = [
        f"# {devices} single-threaded processes on this machine ({os.cpu_count()} cores), written by",
        "# examples/local_cluster.py: the profile measured here, the loopback link measured here.",
        "[network]",
        f"bandwidth_mbps = {mbps:.0f}",
        f"latency_ms = {latency_ms:.3f}",
    ]
    for i in range(devices):
        lines += ["", "[[device]]", f'name = "{"host" if i == 0 else f"dev-{i}"}"']
        if i == 0:
            lines.append("host = true")
        lines += [f'address = "127.0.0.1:{BASE_PORT + i}"', f'profile = "{profile}"', "threads = 1"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="a profile JSON from `halpc profile`")
    parser.add_argument("-o", "--output", required=True, help="the cluster TOML to write")
    parser.add_argument("--devices", type=int, default=max(2, os.cpu_count() or 2),
                        help="devices, host included (default: this machine's cores, at least 2)")
    args = parser.parse_args(argv)
    output, profile = Path(args.output), Path(args.profile)
    if args.devices < 2:
        print(f"error: --devices {args.devices}: a cluster needs the host and at least one worker", file=sys.stderr)
        return 2
    if not profile.is_file():
        print(f"error: --profile {profile}: no such file; make one with `halpc profile MODEL -o {profile}`",
              file=sys.stderr)
        return 2
    mbps, latency_ms = loopback_link()
    relative = os.path.relpath(profile.resolve(), output.resolve().parent)
    output.write_text(cluster_text(args.devices, relative, mbps, latency_ms))
    print(f"{output}: {args.devices} devices, loopback {mbps:.0f} Mbit/s, {latency_ms:.3f} ms one way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
