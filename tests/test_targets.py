"""Bit-exact on the boards: the exactness rules against ONNX Runtime, plans made exact per target,
and every machine refusing a bundle compiled for another.

The rules are checked natively on x86-64 with ORT's NCHWc layout off (the im2col + SGEMM kernels
ARM64 builds run) and, under the `slow` marker, inside the emulated ARM64 environment (`make
arm64-env`: Debian arm64 under qemu-user, Cortex-A72, the aarch64 onnxruntime wheel), where real
bundles compiled for aarch64 are verified and a real ARM64 stub serves an x86 host.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import backbones
import models
import segmentation
from bundles import free_ports, local_cluster, save, trunk_of
from exactness_cases import run_cases
from halpc.compile import compile_bundle
from halpc.errors import HalpcError
from halpc.host import emulation
from halpc.host.verify import verify
from halpc.planner.plan import even_plan
from halpc_stub.host import HostSession
from halpc_stub.host_node import RunError
from halpc_stub.manifest import load_manifest
from planning import random_plan
from test_cli_errors import assert_nothing_written, cluster_toml, error_line, run_cli

TESTS = Path(__file__).parent


def assert_rules_sound(result: dict) -> None:
    """No strip the rules call exact differs, and both verdicts were really put to the test."""
    counts = result["counts"]
    assert result["predicted_exact_but_inexact"] == [], result
    assert counts.get("predicted exact, measured exact", 0) >= 20, counts
    assert counts.get("predicted inexact, measured inexact", 0) >= 5, counts


def test_the_rules_never_call_an_inexact_strip_exact_off_nchwc() -> None:
    assert_rules_sound(run_cases(150, seed=1, target_name="x86_64-nonchwc"))


@pytest.mark.parametrize("target", ["x86_64", "x86_64-nonchwc"])
def test_the_conv_transpose_rule_never_calls_an_inexact_strip_exact(target: str) -> None:
    """ConvTranspose runs through MLAS's SGEMM even where convolutions run NCHWc: with K > 128 a
    strip's K-blocks follow its pixel count, which the rule must see (measured: 34 of 240 random
    strips inexact before the rule)."""
    assert_rules_sound(run_cases(80, seed=2, target_name=target, kind="conv_transpose"))


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> Path:
    return save(models.build("vgg16", 64, 64, seed=1), tmp_path_factory.mktemp("vgg"), "vgg16.onnx")


def test_a_plan_the_rules_refuse_is_refused_and_really_inexact(vgg: Path, tmp_path: Path) -> None:
    """An even plan over three devices is not exact off NCHWc: compile says so in one line
    naming the layer; with --allow-inexact the bundle compiles and verify finds the difference."""
    cluster = local_cluster(3)
    plan = even_plan(trunk_of(vgg), list(cluster.names))
    with pytest.raises(HalpcError, match=r"not bit-exact on x86_64-nonchwc: .*: \S+ \(Conv\) rows"):
        compile_bundle(vgg, cluster, tmp_path / "refused", plan=plan, arch="x86_64-nonchwc")
    assert not (tmp_path / "refused").exists()
    compile_bundle(vgg, cluster, tmp_path / "inexact", plan=plan, arch="x86_64-nonchwc", allow_inexact=True)
    assert not any(c.exact for c in verify(tmp_path / "inexact"))
    # The same plan made legal by the planner's rules is exact.
    compile_bundle(vgg, cluster, tmp_path / "legal", "even", arch="x86_64-nonchwc")
    checks = verify(tmp_path / "legal")
    assert checks and all(c.exact for c in checks)
    assert load_manifest(tmp_path / "legal").program("dev-1"), "the legal plan still splits"


def test_the_cli_names_the_target_and_the_way_out(vgg: Path, tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(cluster_toml(["host", "dev-1"]))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(even_plan(trunk_of(vgg), ["host", "dev-1"]).dumps(trunk_of(vgg)))
    out = tmp_path / "b"
    proc = run_cli("compile", vgg, "--cluster", cluster_file, "--plan", plan_file, "--arch", "aarch64", "-o", out)
    error_line(proc, "--plan", "not bit-exact on aarch64", "allow inexact")
    assert_nothing_written(out)


@pytest.fixture(scope="module")
def arm_bundle(vgg: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arm") / "bundle"
    cluster = local_cluster(2, ports=free_ports(2))
    compile_bundle(vgg, cluster, out, "halp", arch="aarch64", insecure=True)
    return out


def test_an_aarch64_bundle_is_refused_on_this_machine(arm_bundle: Path) -> None:
    manifest = load_manifest(arm_bundle)
    assert manifest.data["target"] == {"name": "aarch64", "arch": "aarch64", "nchwc": False, "exact": True}
    with pytest.raises(RunError, match=r"this host \(host\) is x86_64 .*compiled for aarch64 without NCHWc"):
        HostSession(arm_bundle)
    stub = subprocess.run([sys.executable, "-m", "halpc_stub.cli", str(arm_bundle), "--device", "dev-1", "--check"],
                          capture_output=True, text=True)
    assert stub.returncode in (1, 2) and len(stub.stderr.strip().splitlines()) == 1, stub.stderr
    assert "dev-1 is x86_64" in stub.stderr and "--allow-inexact" in stub.stderr
    allowed = subprocess.run([sys.executable, "-m", "halpc_stub.cli", str(arm_bundle), "--device", "dev-1", "--check", "--allow-inexact"],
                             capture_output=True, text=True)
    assert allowed.returncode == 0 and "WARNING: --allow-inexact" in allowed.stderr
    with pytest.raises(HalpcError, match="verify an aarch64 bundle in the emulated ARM64 environment"):
        verify(arm_bundle)


# --- under ARM64 emulation ------------------------------------------------------------------

def emulated() -> None:
    if why := emulation.unavailable():
        pytest.skip(why)


def run_inside(*command: str, timeout_s: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(emulation.TOOLS / "run.sh"), "--", *command],
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "cases"), [("conv", 120), ("conv_transpose", 60)])
def test_the_rules_never_call_an_inexact_strip_exact_on_arm64(kind: str, cases: int) -> None:
    emulated()
    proc = run_inside("python", str(TESTS / "exactness_cases.py"), "--cases", str(cases), "--seed", "2",
                      "--kind", kind)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["target"] == "aarch64"
    assert_rules_sound(result)


@pytest.mark.slow
def test_bundles_for_aarch64_are_bit_exact_on_arm64(tmp_path: Path) -> None:
    """VGG-16, ResNet-18, MobileNet-V1, a U-Net (ConvTranspose, skip Concats), a bilinear FPN and
    MobileNetV3-Small (SE blocks) for 2-4 ARM boards, even, random and halp plans, all verified in
    one emulated `halpc verify`."""
    emulated()
    bundles = []
    builders = {name: functools.partial(models.build, name) for name in ("vgg16", "resnet18", "mobilenet_v1_100")}
    builders.update(unet=segmentation.unet, fpn=segmentation.fpn, mobilenet_v3_small=backbones.BACKBONES["mobilenet_v3_small"])
    for name, build in builders.items():
        path = save(build(64, 64, seed=3), tmp_path, f"{name}.onnx")
        for devices, strategy in ((2, "even"), (3, "halp"), (4, "random")):
            cluster = local_cluster(devices)
            out = tmp_path / f"{name}-{devices}-{strategy}"
            plan = random_plan(trunk_of(path), list(cluster.names), seed=devices) if strategy == "random" else None
            if plan is not None:  # a random plan is made exact the way the planner makes its own
                from halpc.inputs.target import TARGETS
                from halpc.planner.legal import Legal
                plan = Legal(trunk_of(path), cluster, TARGETS["aarch64"]).plan(plan)
            compile_bundle(path, cluster, out, "even" if plan else strategy, plan, arch="aarch64")
            bundles.append(out)
    splits = sum(bool(load_manifest(b).program("dev-1")) for b in bundles)
    assert splits >= 12, f"only {splits} of {len(bundles)} bundles split: the test would prove little"
    proc = run_cli("verify", *bundles)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("outputs exact: bit-exact") == len(bundles), proc.stdout
    assert "NOT" not in proc.stdout


@pytest.mark.slow
def test_a_real_arm64_stub_is_refused_by_an_x86_host_for_an_x86_bundle(vgg: Path, tmp_path: Path) -> None:
    """The stub runs in the emulated ARM64 root and answers over a real socket; the host, whose
    bundle was compiled for x86_64 (plain strips, no NCHWc), refuses it by what its pong says.
    A bundle whose strips are ORT's NCHWc graphs it cannot run at all, --allow-inexact or not."""
    emulated()
    nchwc = tmp_path / "nchwc"
    compile_bundle(vgg, local_cluster(2, ports=free_ports(2)), nchwc, "even", insecure=True)
    assert load_manifest(nchwc).data["target"]["optimized"]  # compiled on its target: ORT's graphs
    own = run_inside("python", "-m", "halpc_stub.cli", str(nchwc), "--device", "dev-1", "--check", "--allow-inexact",
                     timeout_s=300)
    last = own.stderr.strip().splitlines()[-1]
    assert own.returncode in (1, 2) and last.startswith("halpc-stub: error: dev-1: the bundle's strips are ONNX "
                                                        "Runtime graphs reordered for NCHWc blocks of"), own.stderr
    assert "has no NCHWc kernels" in last and "--arch x86_64-nonchwc" in last, own.stderr
    bundle = tmp_path / "bundle"
    compile_bundle(vgg, local_cluster(2, ports=free_ports(2)), bundle, "even", insecure=True, arch="x86_64-nonchwc")
    own = run_inside("python", "-m", "halpc_stub.cli", str(bundle), "--device", "dev-1", "--check", timeout_s=300)
    assert own.returncode in (1, 2) and "dev-1 is aarch64 without NCHWc" in own.stderr, own.stderr
    stub = subprocess.Popen(["bash", str(emulation.TOOLS / "run.sh"), "--", "python", "-m", "halpc_stub.cli",
                             str(bundle), "--device", "dev-1", "--allow-inexact"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with HostSession(bundle, timeout_s=120) as host, pytest.raises(RunError, match=r"dev-1 is aarch64 without NCHWc"):
            host.connect(start_s=120)  # the stub takes seconds to start under emulation
    finally:
        stub.terminate()
        stub.wait(timeout=30)
