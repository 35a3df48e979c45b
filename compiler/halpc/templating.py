"""The jinja2 templates halpc renders: launchers and systemd units for boards, HTML reports."""
from __future__ import annotations

from importlib import resources

import jinja2


def templates() -> jinja2.Environment:
    """The environment over halpc's template folder; a missing variable is an error, HTML escaped."""
    folder = resources.files("halpc.templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(["html"]),
    )
