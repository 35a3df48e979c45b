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


def progress(quiet: bool, as_json: bool = False) -> TerminalProgress:
    """Progress lines for a long command: on a terminal only, never with --quiet or --json."""
    return TerminalProgress(not quiet and not as_json)


def load_trunk(model: str, input_shapes: tuple[str, ...]):
    """MODEL, loaded with the --input-shape options, analysed."""
    from halpc.analyse.trunk import analyse
    from halpc.cli.options import parse_input_shapes
    from halpc.inputs.model import load_model

    return analyse(load_model(model, parse_input_shapes(input_shapes)))
