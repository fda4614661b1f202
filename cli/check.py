"""``stacktools check``: find corrupt particles and damaged stacks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from stacktools.cli.options import ALLOW_OUTSIDE_PROJECT, DASK, PROJECT_DIR_HELP, dask_client
from stacktools.cli.output import byte_progress, console, emit_json, fmt_bytes, kv_table, table


def check(
    particles: Path = typer.Argument(..., help="Particles .cs or RELION particle STAR.", dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough", help="Passthrough .cs to join on uid."),
    outliers: Optional[float] = typer.Option(
        None, "--outliers", metavar="K",
        help="Also flag particles whose mean or standard deviation lies more than K robust "
             "deviations (1.4826 × MAD) from the set's median; 6 is a cautious choice "
             "[default: off]."),
    write_clean: Optional[Path] = typer.Option(
        None, "--write-clean", dir_okay=False,
        help="Write the set without the bad particles to this file (.cs with its .csg, or STAR "
             "for a STAR input)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace the --write-clean file if it exists."),
    threads: Optional[int] = typer.Option(None, "--threads", "-j", min=1,
                                          help="Stacks read at the same time [default: the number of "
                                               "cores, at most 8; with --dask: the workers decide]."),
    dask: Optional[str] = DASK,
    limit: int = typer.Option(20, "--limit", min=0, help="Bad particles listed (all are counted; --json lists all)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Read every selected particle once and report the corrupt ones.

    Reports particles with NaN or ±inf, all-zero and constant particles, stacks that are
    truncated or whose box disagrees with the metadata, indices past the end of a
    stack, and (with --outliers) statistical outliers.

    Exit status: 0 when the set is clean, 1 when something bad was found, 2 on bad input.
    """
    from stacktools.api import check_particles
    from stacktools.check import bytes_to_read
    from stacktools.check import write_clean as write
    from stacktools.formats.atomic import check_output
    from stacktools.particles import ParticleSet

    pset = ParticleSet.open(particles, project_dir, passthrough, allow_outside_project=allow_outside_project)
    if write_clean is not None:  # refuse a bad output before reading a byte
        check_output(write_clean, [particles, passthrough], overwrite=force)
    quiet = quiet or as_json or not sys.stderr.isatty()
    total = 0 if quiet else bytes_to_read(pset)
    with dask_client(dask) as client, byte_progress("checking", total, quiet) as advance:
        report = check_particles(pset, outliers=outliers, progress=advance, threads=threads, client=client)
    clean_path = write(pset, report, write_clean, overwrite=force) if write_clean is not None else None
    if as_json:
        doc = report.to_dict(pset)
        doc["clean_written"] = str(clean_path) if clean_path else None
        emit_json(doc)
    else:
        _render(report, pset, limit, clean_path)
    if not report.clean:
        raise typer.Exit(1)


def _render(report, pset, limit: int, clean_path) -> None:
    counts = ", ".join(f"{r} {n:,}" for r, n in report.counts.items()) or "none"
    rows = [("checked", report.source),
            ("particles", f"{report.particles:,} in {report.stacks:,} stacks"),
            ("pixels read", fmt_bytes(report.bytes_read)),
            ("bad particles", f"{len(report.bad):,} ({counts})"),
            ("stack problems", f"{len(report.stack_problems):,}"),
            ("result", "CLEAN" if report.clean else "BAD PARTICLES FOUND")]
    if clean_path is not None:
        rows.append(("clean set written", f"{clean_path} ({report.particles - len(report.bad):,} particles)"))
    out = console()
    out.print(kv_table(rows))
    if report.stack_problems:
        t = table("stacks", ("stack", "selected rows", "problem"))
        for p in report.stack_problems:
            t.add_row(Path(p.path).name, f"{p.rows:,}", p.problem)
        out.print(t)
    if report.bad and limit:
        listed = report.to_dict(pset, limit=limit)["bad"]
        t = table(f"bad particles (first {len(listed)} of {len(report.bad):,})",
                  ("row", "stack", "index", "reasons"))
        for b in listed:
            t.add_row(str(b["row"]), Path(b["stack"]).name, str(b["index"]), ", ".join(b["reasons"]))
        out.print(t)
