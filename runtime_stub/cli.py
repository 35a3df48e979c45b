"""`halpc-stub BUNDLE --device NAME`: the program on each board.

This version checks a device folder (manifest, every file's sha256, that ONNX Runtime opens each
model) and exits; serving tasks over the network arrives with the runtime.
"""
from __future__ import annotations

import argparse
import sys

from halpc_stub.errors import BundleError
from halpc_stub.manifest import load_manifest
from halpc_stub.session import make_session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="halpc-stub", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the bundle folder, or this device's folder of it")
    parser.add_argument("--device", required=True, help="this device's name in the manifest")
    parser.add_argument("--check", action="store_true", help="check the files and exit")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.bundle)
        device = manifest.device(args.device)
        manifest.check_files(device.name)
        files = sorted({s["model"] for s in manifest.program(device.name) if "model" in s})
        for file in files:
            make_session(str(manifest.path(device.name, file)), device.threads)
    except BundleError as exc:
        print(f"halpc-stub: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"halpc-stub: {device.name}: {len(files)} models verified and loaded, "
          f"{len(manifest.program(device.name))} steps per task")
    if not args.check:
        print("halpc-stub: error: serving tasks over the network is not in this version; "
              "use --check, or `halpc verify` to run the bundle in one process", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
