"""``stacktools cache …``: the node-local SSD particle cache."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage a node-local SSD particle cache.", no_args_is_help=True)
