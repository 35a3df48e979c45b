"""Running halpc in the emulated ARM64 environment: a bundle for Raspberry Pis checked on a PC.

`make arm64-env` builds it once (tools/arm64/build-env.sh: a Debian arm64 root under qemu-user
with the bundle's onnxruntime aarch64 wheel, cached in /var/cache/halpc/arm64); here halpc runs a
command inside it (tools/arm64/run.sh), with the bundles bound read-only, and hands back what it
printed and its exit status. It needs root (chroot and mounts) and halpc's source tree (the
tools/ folder beside compiler/). On a real board none of this is needed: `halpc verify` runs there
natively.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import halpc
from halpc.errors import HalpcError

TOOLS = Path(halpc.__file__).resolve().parents[2] / "tools" / "arm64"
SOURCE = Path(halpc.__file__).resolve().parents[2]


def root() -> Path:
    return Path(os.environ.get("HALPC_ARM64_ROOT", "/var/cache/halpc/arm64"))


def unavailable() -> str | None:
    """Why the emulated ARM64 environment cannot be used here (None: it can)."""
    if not (TOOLS / "run.sh").exists():
        return f"the emulated ARM64 environment comes with halpc's source tree ({TOOLS} is missing)"
    if os.geteuid() != 0:
        return "the emulated ARM64 environment needs root (chroot, mounts)"
    if not (root() / ".halpc-ready").exists():
        return f"no emulated ARM64 environment at {root()}: build it with `make arm64-env` (about 5 minutes, once)"
    return None


def run_halpc(args: list[str], bundles: list[Path], timeout_s: float = 3600) -> subprocess.CompletedProcess:
    """`halpc ARGS` inside the emulated ARM64 environment, the bundles bound read-only at their
    own paths; stdout and stderr captured."""
    if why := unavailable():
        raise HalpcError(why)
    binds = []
    for bundle in bundles:
        path = bundle.resolve()
        if not path.is_relative_to(SOURCE):  # the source tree is bound already
            binds += ["-b", str(path)]
    argv = ["bash", str(TOOLS / "run.sh"), *binds, "--", "python", "-m", "halpc.cli", *args]
    env = {**os.environ, "HALPC_ARM64_ROOT": str(root())}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)


def needs_emulation(bundle) -> bool:
    """Whether a bundle was compiled for aarch64 and this machine is not one."""
    from halpc_stub.manifest import load_manifest
    from halpc_stub.session import machine_arch

    return machine_arch() != "aarch64" and load_manifest(bundle).data.get("target", {}).get("arch") == "aarch64"
