"""Options shared by several commands."""

from __future__ import annotations

import typer

ALLOW_OUTSIDE_PROJECT = typer.Option(
    False, "--allow-outside-project",
    help="Accept blob/path values that are absolute or lead outside the project directory "
         "(imports that really point elsewhere). Default: off, such a path is an error.")
