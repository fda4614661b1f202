"""``stacktools demo``: build a small CryoSPARC-shaped project and run the main flow on it."""

from __future__ import annotations

from pathlib import Path

import typer

from stacktools.cli.output import console, emit_json, fmt_bytes, kv_table


def demo(
    directory: Path = typer.Argument(Path("stacktools-demo"), help="Where to create the demo project."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Make a small CryoSPARC-shaped project and run size → consolidate → cache on it."""
    from stacktools.demo import run_demo

    summary = run_demo(directory, quiet=quiet)
    if as_json:
        emit_json(summary)
        return
    out = console()
    out.print(f"[bold]Demo project[/bold] in {summary['project_dir']}")
    for step in summary["steps"]:
        out.print(kv_table([(k, _fmt(k, v)) for k, v in step["show"].items()], title=step["title"]))


def _fmt(key: str, value) -> str:
    if isinstance(value, int) and key.endswith("bytes"):
        return fmt_bytes(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
