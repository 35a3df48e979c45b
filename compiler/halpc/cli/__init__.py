"""The `halpc` command: a thin layer over the library; user errors become one line, exit 1 or 2.

The commands only parse, call the library and print. A library error names the object at fault
and, where it is about one of the call's arguments, that parameter (`HalpcError.option`); here it
gets the command-line flag that sets it.
"""
from __future__ import annotations

import sys
import traceback

import click

from halpc.cli import plan_commands, run_commands  # noqa: F401  (they register the commands)
from halpc.cli.app import cli
from halpc.cli.options import FLAGS
from halpc.errors import HalpcError
from halpc_stub.errors import BundleError


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every user error, click's usage errors included, becomes one stderr line."""
    try:
        cli.main(args=argv, prog_name="halpc", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except BundleError as exc:  # HalpcError too: it derives from the stub's error
        flag = FLAGS.get(exc.option) if isinstance(exc, HalpcError) and exc.option else None
        _fail(f"{flag} {exc}" if flag else str(exc), exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        _fail("interrupted", 130)
    except Exception as exc:  # not the user's doing: say so, with what a bug report needs
        traceback.print_exc()
        _fail(f"internal error ({type(exc).__name__}): this is a bug in halpc; please report it with the "
              "traceback above", 70)


def _fail(message: str, code: int) -> None:
    click.echo("halpc: error: " + " ".join(message.split()), err=True)
    sys.exit(code)


__all__ = ["cli", "main"]
