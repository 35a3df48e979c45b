"""Segmentation decoders split to the output: a U-Net (ConvTranspose up, skip Concats) and a
semantic FPN (bilinear Resize in the top-down path and to the input size), compiled for 2, 3 and
4 devices with `even`, `halp` and random uneven plans (1-row strips included), every output
verified bit-exact; and `inspect` says all of their MACs are split."""
from __future__ import annotations

import json

import pytest

import segmentation  # examples/segmentation.py
from bundles import assert_exact, compile_and_verify, save, trunk_of
from halpc.analyse.coverage import coverage
from planning import random_plan
from test_cli_errors import run_cli

# (builder, base width): the wide U-Net's up-convolutions have K = Cin > 128, where a strip's
# SGEMM K-blocks may differ from the whole layer's and plans must respect the exactness rules.
DECODERS = {"unet": ("unet", 16), "unet_wide": ("unet", 40), "fpn": ("fpn", 32)}


@pytest.fixture(scope="module", params=sorted(DECODERS))
def decoder(request, tmp_path_factory):
    name, width = DECODERS[request.param]
    model = segmentation.SEGMENTERS[name](64, 64, seed=3, width_base=width)
    return save(model, tmp_path_factory.mktemp(request.param))


def test_every_mac_is_split_and_the_mask_is_a_trunk_output(decoder) -> None:
    trunk = trunk_of(decoder)
    found = coverage(trunk)
    assert found.model_macs > 0 and found.split_macs == found.model_macs
    assert found.ends == () and trunk.tail == () and trunk.exits == (segmentation.MASK,)
    assert {layer.op_type for layer in trunk.layers} >= {"Conv", "Relu"}
    assert any(layer.op_type in ("ConvTranspose", "Resize") for layer in trunk.layers)


def _assert_mask_exact(checks: list) -> None:
    assert_exact(checks)
    assert {c.name for c in checks} == {segmentation.MASK}


@pytest.mark.parametrize("devices", [2, 3, 4])
def test_even_and_halp_plans_verify_bit_exact(decoder, devices, tmp_path) -> None:
    for strategy in ("even", "halp"):
        _assert_mask_exact(compile_and_verify(decoder, tmp_path / strategy, devices, strategy=strategy, keep=False))


@pytest.mark.parametrize("seed", range(4))
def test_random_uneven_plans_verify_bit_exact(decoder, seed, tmp_path) -> None:
    trunk = trunk_of(decoder)
    devices = ["host", "dev-1", "dev-2", "dev-3"][: 2 + seed % 3]
    plan = random_plan(trunk, devices, seed)
    assert any(s.rows[1] - s.rows[0] == 1 for block in plan.blocks for s in block.strips), "no 1-row strip"
    _assert_mask_exact(compile_and_verify(decoder, tmp_path / "random", len(devices), plan=plan, keep=False,
                                          arch="x86_64"))


def test_inspect_json_shows_the_whole_model_split(decoder) -> None:
    proc = run_cli("inspect", decoder, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["split_share"] == 1.0 and data["ends"] == []
