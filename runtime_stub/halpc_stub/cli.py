"""`halpc-stub BUNDLE --device NAME`: the program on each board.

It checks the manifest, the sha256 of this device's files and its secret key, opens one ONNX
Runtime session per subgraph, then listens on the device's address and runs its part of every
task the host sends (in a bundle of several sources: every source's that has work here).
`--check` stops after the checks. SIGTERM or Ctrl-C stops it cleanly.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

import onnxruntime

from halpc_stub import keys
from halpc_stub.errors import BundleError
from halpc_stub.manifest import load_manifest
from halpc_stub.serve import StubNode
from halpc_stub.session import load_sessions, target_mismatch, this_target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halpc-stub", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the bundle folder, or this device's folder of it")
    parser.add_argument("--device", required=True, help="this device's name in the manifest")
    parser.add_argument("--check", action="store_true", help="check the files and exit")
    parser.add_argument("--bind", help="listen here instead of the manifest address, e.g. tcp://*:5702")
    parser.add_argument("--allow-inexact", action="store_true",
                        help="run on a machine the bundle was not compiled for (outputs then differ by ~1e-6)")
    parser.add_argument("--key", help="the secret key file (default: keys/DEVICE.key_secret in the device's folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="halpc-stub %(message)s", level=logging.WARNING)
    try:
        manifest = load_manifest(args.bundle)
        device = manifest.device(args.device)
        manifest.check_files(device.name)
        if manifest.data["onnxruntime"] != onnxruntime.__version__:
            wanted = manifest.data["onnxruntime"]
            raise BundleError(f"{device.name}: the bundle was compiled for onnxruntime {wanted!r}, this device has "
                              f"{onnxruntime.__version__!r}; outputs are bit-exact only with that build: "
                              f"pip install 'onnxruntime=={wanted}'")
        if why := target_mismatch(manifest, this_target(manifest), device.name):
            if not args.allow_inexact:
                raise BundleError(why)
            print(f"halpc-stub: {device.name}: WARNING: --allow-inexact: {why}", file=sys.stderr, flush=True)
        if keys.load(manifest, device.name, args.key) is None:
            print(f"halpc-stub: {device.name}: {keys.INSECURE_WARNING}", file=sys.stderr, flush=True)
        sessions = load_sessions(manifest, device.name)
        plans = manifest.plans
        steps = len(manifest.program(device.name))
        more = f" ({len(plans) - 1} alternative plans)" if len(plans) > 1 else ""
        print(f"halpc-stub: {device.name}: {len(sessions)} models verified and loaded, {steps} steps per task"
              f"{more}", flush=True)
        if args.check:
            return 0
        node = StubNode(manifest, device.name, sessions.__getitem__, args.bind, args.key)
    except BundleError as exc:
        print("halpc-stub: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return exc.exit_code
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    hosts = f", serving {', '.join(node.hosts)}" if len(node.hosts) > 1 else ""
    print(f"halpc-stub: {device.name}: listening on {node.endpoint}, plan {node.bundle_checksum[:12]}{hosts}", flush=True)
    try:
        node.serve(lambda: bool(stop))
    finally:
        node.close()
    print(f"halpc-stub: {device.name}: stopped after {node.served_line()}, "
          f"{node.rejected} messages rejected", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
