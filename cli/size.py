"""``stacktools size``: the guide's formula, or exact figures for a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stacktools.cli.options import ALLOW_OUTSIDE_PROJECT, PROJECT_DIR_HELP
from stacktools.cli.output import console, emit_json, fmt_bytes, kv_table, table


def size(
    particles: Optional[Path] = typer.Argument(None,
                                               help="Particles .cs or RELION particle STAR (omit for formula mode).",
                                               exists=False, dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough", help="Passthrough .cs to join on uid."),
    box: Optional[int] = typer.Option(None, "--box", min=1, help="Formula mode: box size in pixels."),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=0, help="Formula mode: number of particles."),
    nsymbt: int = typer.Option(128, "--nsymbt", min=0, help="Extended-header bytes per particle in the formula."),
    header_length: int = typer.Option(1024, "--header-length", min=0, help="Header bytes per particle in the formula."),
    per_stack: bool = typer.Option(False, "--per-stack", help="Also list every stack."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Report how big a particle dataset is.

    Formula mode (--box and --count) gives the CryoSPARC guide's estimate
    (4·box² + nsymbt + header_length)·N. Dataset mode reads only the stacks'
    headers and gives the exact bytes a cache copies today and what the selected
    particles alone would take once consolidated.
    """
    from stacktools.size import formula_bytes

    if particles is None:
        if box is None or count is None:
            raise typer.BadParameter("give a PARTICLES.cs file, or both --box and --count")
        total = formula_bytes(box, count, nsymbt, header_length)
        if as_json:
            emit_json({"box": box, "count": count, "nsymbt": nsymbt,
                       "header_length": header_length, "formula_bytes": total})
        else:
            # Plain print: the one line needs no rich console (start-up is the whole cost here).
            print(f"(4·{box}² + {nsymbt} + {header_length}) × {count:,} = {fmt_bytes(total)}")
        return

    from stacktools.particles import ParticleSet
    from stacktools.size import size_particles

    pset = ParticleSet.open(particles, project_dir, passthrough,
                            allow_outside_project=allow_outside_project)
    report = size_particles(pset, nsymbt=nsymbt, header_length=header_length)
    if as_json:
        emit_json(report.to_dict(per_stack=per_stack))
        return
    modes = ", ".join(f"{m} ({n:,})" for m, n in report.modes.items()) or "-"
    rows = [
        ("particles", f"{report.particles:,} of {report.stack_particles:,} in the stacks"),
        ("stacks", f"{report.stacks:,}"),
        ("box", f"{report.box} px"),
        ("pixel modes", modes),
        ("formula estimate", fmt_bytes(report.formula_bytes)),
        ("cache today (whole stacks)", fmt_bytes(report.cache_bytes)),
        ("consolidated (selected only)", fmt_bytes(report.consolidated_bytes)),
        ("saved by consolidating", f"{fmt_bytes(report.saved_bytes)}, {report.saved_fraction:.1%}"),
    ]
    if report.extended_header_bytes:
        rows.insert(4, ("extended headers", fmt_bytes(report.extended_header_bytes)))
    out = console()
    out.print(kv_table(rows, title=str(particles)))
    if report.shrink:
        t = table("selected only, shrunk while consolidating", ("box", "pixels", "size", "of selected only"))
        for r in report.shrink:
            frac = r["bytes"] / report.consolidated_bytes if report.consolidated_bytes else 0.0
            box_text = f"{r['box']} (Fourier crop)" if r["box"] != report.box else f"{r['box']}"
            t.add_row(box_text, "float16" if r["dtype"] == "float16" else "as now", fmt_bytes(r["bytes"]),
                      f"{frac:.1%}")
        out.print(t)
    if per_stack:
        t = table(None, ("stack", "selected", "particles", "mode", "file bytes", "consolidated"))
        for s in report.per_stack:
            t.add_row(Path(s["path"]).name, f"{s['selected']:,}", f"{s['nz']:,}", str(s["mode"]),
                      f"{s['file_bytes']:,}", f"{s['consolidated_bytes']:,}")
        out.print(t)
