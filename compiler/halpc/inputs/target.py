"""What a bundle is compiled for: the CPU kind and ONNX Runtime kernels of its devices.

Bit-exactness is a property of the kernels that run the strips. On x86-64 ONNX Runtime runs
convolutions in its blocked NCHWc layout, and every strip is exact. ARM64 builds (a Raspberry
Pi, a Jetson's CPU) have no NCHWc kernels: convolutions run as im2col + SGEMM, whose rounding
depends on how many output pixels a call computes, so strips must keep the rules of
`analyse.exactness`. x86-64 can be told to run like that too (`x86_64-nonchwc`), which is how
this machine checks those rules natively.
"""
from __future__ import annotations

from dataclasses import dataclass

from halpc.errors import HalpcError


@dataclass(frozen=True)
class Target:
    arch: str  # "x86_64" or "aarch64", as `halpc_stub.session.machine_arch` names them
    nchwc: bool  # ONNX Runtime rewrites convolutions to its NCHWc layout

    @property
    def name(self) -> str:
        return next(name for name, t in TARGETS.items() if t == self)

    @property
    def mlas(self) -> str | None:
        """The MLAS path the exactness rules describe for this target (None: NCHWc, always exact)."""
        return None if self.nchwc else f"{self.arch}-nonchwc" if self.arch == "x86_64" else self.arch


TARGETS = {
    "x86_64": Target("x86_64", True),
    "x86_64-nonchwc": Target("x86_64", False),
    "aarch64": Target("aarch64", False),
}


def parse_target(name: str, where: str = "arch") -> Target:
    if name not in TARGETS:
        raise HalpcError(f"{name!r} is not a target halpc knows; use one of {', '.join(TARGETS)}", option=where)
    return TARGETS[name]


def this_machine() -> Target:
    """The target of this machine's ONNX Runtime (asked of ORT itself: NCHWc or not)."""
    from halpc_stub.session import machine_arch, nchwc_available

    arch = machine_arch()
    if arch not in ("x86_64", "aarch64"):
        raise HalpcError(f"this machine is {arch}; halpc compiles for x86_64 and aarch64: name the boards' "
                         f"target ({', '.join(TARGETS)})", option="arch")
    return Target(arch, nchwc_available() and arch == "x86_64")


def cluster_target(cluster) -> Target:
    """The target a cluster's bundle is compiled for: its host's (`arch` in the cluster file),
    else this machine's. The reference output is the unsplit model on that target."""
    arch = cluster.host.arch
    return TARGETS[arch] if arch else this_machine()


def optimized_strips_block(cluster) -> int:
    """The NCHWc block (channels) whose reordered filters the cluster's strips ship with, or 0.

    Only this machine's ONNX Runtime can say how it rewrites a graph, and the rewrite depends on
    its vector width, so strips ship as ORT's optimized graphs (`emit.ort_graphs`) only where
    this machine is the target, with NCHWc, and every device is that target too; elsewhere
    they stay plain ONNX that each session optimizes itself."""
    from halpc_stub.session import nchwc_block

    target = cluster_target(cluster)
    if not target.nchwc or target != this_machine() or any((d.arch or target.name) != target.name
                                                           for d in cluster.devices):
        return 0
    return nchwc_block()
