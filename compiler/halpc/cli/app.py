"""The `halpc` click group and the options several commands share."""
from __future__ import annotations

import click

from halpc.cli.progress import TerminalProgress


@click.group()
@click.version_option(package_name="halpc")
def cli() -> None:
    """Split one CNN's spatial layers across several edge devices, bit-exactly."""


input_shape = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=DIMS",
    help="Fix an input's shape, e.g. images=1x3x320x320 (needed for dynamic dims).",
)
quiet = click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
arch_option = click.option(
    "--arch", type=click.Choice(("x86_64", "x86_64-nonchwc", "aarch64")),
    help="The devices' target: aarch64 (Raspberry Pi, Jetson CPU), x86_64 (ONNX Runtime's NCHWc kernels) "
         "or x86_64-nonchwc; default: each device's arch in the cluster file, else this machine's.")
allow_inexact = click.option(
    "--allow-inexact", is_flag=True,
    help="Use devices of another target than the host's, or a plan whose strips round differently on the "
         "target: outputs then differ from the unsplit model's by about 1e-6 (float).")


def progress(quiet: bool, as_json: bool = False) -> TerminalProgress:
    """Progress lines for a long command: on a terminal only, never with --quiet or --json."""
    return TerminalProgress(not quiet and not as_json)


def load_trunk(model: str, input_shapes: tuple[str, ...]):
    """MODEL, loaded with the --input-shape options, analysed."""
    from halpc.analyse.trunk import analyse
    from halpc.cli.options import parse_input_shapes
    from halpc.inputs.model import load_model

    return analyse(load_model(model, parse_input_shapes(input_shapes)))
