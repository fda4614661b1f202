"""``stacktools consolidate`` and ``stacktools verify``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from stacktools.cli.options import (
    ALLOW_OUTSIDE_PROJECT,
    CS_FORMAT,
    DASK,
    PROJECT_DIR_DEFAULT,
    PROJECT_DIR_HELP,
    cs_format,
    dask_client,
)
from stacktools.cli.output import (
    byte_progress,
    console,
    emit_json,
    fmt_bytes,
    kv_table,
    table,
)


class Layout(str, Enum):
    per_stack = "per-stack"
    packed = "packed"


class DType(str, Enum):
    auto = "auto"
    keep = "keep"
    float32 = "float32"
    float16 = "float16"


def consolidate(
    particles: Path = typer.Argument(..., help="Particles of the subset: a .cs (e.g. Select 2D's) "
                                     "or a RELION particle STAR.", dir_okay=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: stacks go to OUT/stacks/, "
                                                      "the new .cs (or .star) to OUT/."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough",
                                               help="Passthrough .cs; a matching one is written next to the new .cs."),
    layout: Layout = typer.Option(Layout.per_stack, "--layout",
                                  help="per-stack: one output per source stack; packed: stacks of N "
                                       "particles in input order."),
    particles_per_stack: Optional[int] = typer.Option(None, "--particles-per-stack", min=1,
                                                      help="Packed layout: particles per stack [default: 1000]."),
    threads: int = typer.Option(4, "--threads", "-j", min=1, help="Stacks written at the same time "
                                                                  "(one when they average under 1 MiB; "
                                                                  "with --dask: the workers decide)."),
    dask: Optional[str] = DASK,
    dtype: DType = typer.Option(DType.auto, "--dtype",
                                help="Pixel type written. auto: bit-exact copies in the source's mode, except "
                                     "that for a STAR input float16 (mode 12) sources become float32, which "
                                     "RELION 3.1 reads (float32 stays bit-exact); keep: bit-exact always (with a "
                                     "STAR, float16 stays float16 and a warning says RELION before 5.0 cannot "
                                     "read it); float32 or float16: convert."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Crop each particle about its centre to this box "
                                       "(pixel size kept) [default: no crop]."),
    fourier_crop: Optional[int] = typer.Option(None, "--fourier-crop",
                                               help="Then Fourier-crop to this even box: pixel size x box/N, "
                                                    "shifts rescaled, mean kept [default: no Fourier crop]."),
    mrcs: bool = typer.Option(False, "--mrcs", help="Name the stacks .mrcs (RELION reads them) "
                                                    "[default: off for a .cs, always for a STAR]."),
    fmt: Optional[str] = CS_FORMAT,
    verify: bool = typer.Option(False, "--verify", help="Compare every written particle with its source."),
    fsync: bool = typer.Option(False, "--fsync", help="Flush each stack to the device before renaming it."),
    force: bool = typer.Option(False, "--force", help="Replace another consolidation's outputs in OUT."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be written; write nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Write stacks holding only the selected particles, plus a .cs (or STAR) that points at them.

    Only blob/path and blob/idx change in the new .cs; fields, row order and uids are
    kept. For a STAR, only rlnImageName changes (the old names go to
    rlnImageOriginalName when absent); both blocks and every column are kept. A rerun
    of an interrupted command keeps the stacks already complete.
    """
    from stacktools.consolidate import plan_consolidation, run_plan

    if particles_per_stack is not None and layout is not Layout.packed:
        raise typer.BadParameter("--particles-per-stack needs --layout packed")
    plan = plan_consolidation(particles, out, project_dir=project_dir, passthrough=passthrough,
                              layout=layout.value, particles_per_stack=particles_per_stack,
                              dtype=dtype.value, mrcs=mrcs, allow_outside_project=allow_outside_project,
                              crop=crop, fourier_crop=fourier_crop, cs_format=cs_format(fmt))
    for warning in plan.warnings:
        sys.stderr.write(f"stacktools: warning: {warning}\n")
    total = plan.nbytes
    quiet = quiet or as_json or dry_run or not sys.stderr.isatty()
    with dask_client(None if dry_run else dask) as client, byte_progress("consolidating", total, quiet) as advance:
        write_stacks = None
        if client is not None:
            from stacktools.cluster.consolidate import stack_writer
            write_stacks = stack_writer(client)
        result = run_plan(plan, threads=threads, verify=verify, dry_run=dry_run,
                          fsync=fsync, force=force, progress=advance, write_stacks=write_stacks)
    if as_json:
        emit_json(result.to_dict())
        return
    head = "would write" if result.dry_run else "wrote"
    rows = [
        ("particles", f"{result.particles:,}"),
        ("stacks", f"{result.stacks:,} ({result.layout}, dtype {result.dtype})"),
        (f"{head}", fmt_bytes(result.bytes_written)),
        ("source stacks", fmt_bytes(result.source_bytes)),
        ("saved", f"{fmt_bytes(result.saved_bytes)}, "
                  f"{result.saved_bytes / result.source_bytes:.1%}" if result.source_bytes else "-"),
        ("new STAR", result.star) if result.star else ("new .cs", result.cs),
        ("rlnImageName" if result.star else "blob/path",
         f"{result.paths} (project {result.project_dir})" if result.paths == "relative"
         else "absolute (OUT is outside the project directory)"),
    ]
    if result.passthrough:
        rows.insert(6, ("passthrough", result.passthrough))
    if result.csg:
        rows.insert(7 if result.passthrough else 6, ("result group", result.csg))
    if result.stacks_resumed:
        rows.append(("kept from an earlier run", f"{result.stacks_resumed:,} stacks, "
                                                 f"{fmt_bytes(result.bytes_resumed)}"))
    if result.verified:
        rows.append(("verified", "every particle matches its source"))
    out_console = console()
    out_console.print(kv_table(rows, title="dry run: nothing written" if result.dry_run else None))
    if result.dry_run and result.outputs:
        t = table(f"in {Path(result.outputs[0]['path']).parent}", ("stack", "particles", "bytes"))
        for o in result.outputs:
            t.add_row(Path(o["path"]).name, f"{o['particles']:,}", f"{o['bytes']:,}")
        out_console.print(t)


def verify(
    new_cs: Path = typer.Argument(..., help="The consolidated .cs or STAR.", dir_okay=False),
    against: Path = typer.Option(..., "--against", help="The .cs or STAR it was made from."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p",
                                               help="Project directory for relative paths "
                                                    "[default: as for --against; " + PROJECT_DIR_DEFAULT + "]."),
    threads: int = typer.Option(4, "--threads", "-j", min=1, help="Stacks checked at the same time "
                                                                  "(with --dask: the workers decide)."),
    dask: Optional[str] = DASK,
    crop: Optional[int] = typer.Option(None, "--crop", help="The --crop it was consolidated with "
                                       "[default: as its output directory's manifest records]."),
    fourier_crop: Optional[int] = typer.Option(None, "--fourier-crop",
                                               help="The --fourier-crop it was consolidated with "
                                                    "[default: as its output directory's manifest records]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Check every particle and field of a consolidated set against its source set.

    A set written with --crop, --fourier-crop or --dtype float16 is compared with its
    sources shrunk and converted the same way, bit for bit.

    Exit status: 0 when everything matches, 1 when something differs, 2 on bad input.
    """
    from stacktools.api import verify_consolidated as run
    from stacktools.verify import verify_bytes

    quiet = quiet or as_json or not sys.stderr.isatty()
    total = 0 if quiet else verify_bytes(new_cs, against, project_dir=project_dir,
                                         allow_outside_project=allow_outside_project)
    with dask_client(dask) as client, byte_progress("verifying", total, quiet) as advance:
        result = run(new_cs, against, project_dir=project_dir, threads=threads, progress=advance,
                     allow_outside_project=allow_outside_project, client=client, crop=crop,
                     fourier_crop=fourier_crop)
    if as_json:
        emit_json(result.to_dict())
    else:
        rows = [("checked", str(new_cs)),
                ("against", str(against)),
                ("particles", f"{result.particles:,} in {result.stacks:,} stacks"),
                ("pixels compared", fmt_bytes(result.bytes_checked)),
                ("fields compared", f"{result.fields}"),
                ("result", "OK: identical" if result.ok else
                 f"DIFFERENT: {result.particle_mismatches:,} particles, "
                 f"{result.field_mismatches:,} fields")]
        console().print(kv_table(rows))
        for p in result.problems:
            console(stderr=True).print(f"  {p}", markup=False)
    if not result.ok:
        raise typer.Exit(1)
