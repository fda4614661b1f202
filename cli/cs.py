"""``stacktools cs …``: inspect, filter, join, combine and convert ``.cs`` files."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect, filter, join, combine and convert .cs files.", no_args_is_help=True)
