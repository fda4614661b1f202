"""``stacktools check``: bad stacks and bad particles of a set (NaN, inf, zeros, outliers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacktools.cli.options import ALLOW_OUTSIDE_PROJECT
from stacktools.cli.output import console, emit_json, fmt_bytes, kv_table, table

SHOWN = 50  # problems listed in the table; --json has them all


def check(
    particles: Path = typer.Argument(..., help="Particles .cs file.", dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p",
                                               help="Project directory that blob/path is relative to "
                                                    "[default: parent of the .cs file's job directory]."),
    outliers: bool = typer.Option(False, "--outliers", help="Also flag particles whose mean or std is far "
                                                           "from the set's (see -k)."),
    k: float = typer.Option(6.0, "-k", "--robust-deviations", min=0.0, show_default=True,
                            help="With --outliers: robust deviations (1.4826 MAD) from the median."),
    threads: Optional[int] = typer.Option(None, "--threads", "-j", min=1,
                                          help="Stacks read at once [default: all cores]."),
    write_clean: Optional[Path] = typer.Option(None, "--write-clean", dir_okay=False,
                                               help="Write the set without the bad particles to this .cs "
                                                    "[default: write nothing]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Read every selected particle once; report bad stacks and particles.

    Exit 0 when clean, 1 when bad particles were found, 2 for bad input.
    """
    from stacktools.api import check_particles

    result = check_particles(particles, project_dir=project_dir, outliers=k if outliers else None,
                             threads=threads, write_clean=write_clean,
                             allow_outside_project=allow_outside_project)
    if as_json:
        emit_json(result.to_dict())
    else:
        out = console()
        counts = result.counts()
        out.print(kv_table([
            ("particles", f"{result.particles:,} in {result.stacks:,} stacks"),
            ("read", fmt_bytes(result.bytes_read)),
            ("bad particles", f"{len(result.bad_rows):,}"),
            *[(reason, f"{c:,}") for reason, c in counts.items() if c],
            *([("clean set", result.clean_cs)] if result.clean_cs else []),
        ], title="check"))
        if result.problems:
            t = table(None, ("row", "stack", "index", "problem"))
            for p in result.problems[:SHOWN]:
                t.add_row(str(p.row), p.stack, str(p.index), f"{p.reason}: {p.detail}")
            out.print(t)
            if len(result.problems) > SHOWN:
                out.print(f"... and {len(result.problems) - SHOWN:,} more (--json lists all)")
    if not result.clean:
        raise typer.Exit(1)
