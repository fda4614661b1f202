"""``stacktools cs …``: inspect, filter, join, combine and convert ``.cs`` files.

Thin wrappers over :class:`stacktools.cs.dataset.CsDataset` and the modules under
it. Inputs are never modified; outputs are written atomically and an existing
output is replaced only with ``--force``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import typer

from stacktools.cli.options import CS_FORMAT, cli_app, cs_format
from stacktools.cli.output import (
    console,
    count_progress,
    emit_json,
    fmt_bytes,
    kv_table,
    table,
)

app = cli_app(help="Inspect, filter, join, combine and convert .cs files.")

_OUT = typer.Option(..., "--output", "-o", help="Output file.", dir_okay=False)
_FORCE = typer.Option(False, "--force", "-f", help="Replace the output if it exists.")
_JSON = typer.Option(False, "--json", help="Print one JSON object.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
_PASS = typer.Option(None, "--passthrough", help="Passthrough .cs to inner-join on uid first.", dir_okay=False)


def _check_output(out: Path, inputs: list[Optional[Path]], force: bool) -> None:
    from stacktools.formats.atomic import check_output
    check_output(out, inputs, overwrite=force)
    if out.suffix == ".cs":  # and the result group that goes beside it
        from stacktools.cs.result_group import csg_path
        check_output(csg_path(out), inputs, overwrite=force)


@contextlib.contextmanager
def _steps(description: str, total: int, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar over the steps of one command (read, compute, write)."""
    # A bar is for people watching: none when stderr is a file or a pipe.
    quiet = quiet or not sys.stderr.isatty()
    with count_progress(description, total, quiet) as advance:
        yield lambda: advance(1)


def _load(path: Path, passthrough: Optional[Path] = None, mmap: bool = True):
    from stacktools.cs.dataset import CsDataset
    return CsDataset.load(path, passthrough=passthrough, mmap=mmap)


def _report(as_json: bool, payload: dict, line: str) -> None:
    if as_json:
        emit_json(payload)
    else:
        console().print(line)


def _written(out: Path, rows: int, as_json: bool, extra: dict | None = None, what: str = "particles") -> None:
    payload = {"output": str(out), "rows": rows, "bytes": out.stat().st_size}
    payload.update(extra or {})
    detail = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
                       for k, v in (extra or {}).items())
    _report(as_json, payload, f"wrote {rows:,} {what} to {out}" + (f" ({detail})" if detail else ""))


# ---- inspection -------------------------------------------------------------------

@app.command("info")
def info(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="Per-field statistics."),
    as_json: bool = _JSON,
) -> None:
    """Rows, fields by group with dtypes, format, stacks, box, pixel size and field statistics."""
    from stacktools.cs.info import cs_info

    rep = cs_info(cs, stats=stats)
    if as_json:
        emit_json(rep)
        return
    out = console()
    rows = [("format", "NumPy (.npy)" if rep["format"] == "numpy" else "CSDAT"),
            ("rows", f"{rep['rows']:,}"),
            ("fields", f"{rep['fields']} in {len(rep['groups'])} groups, {rep['row_bytes']} bytes per row"),
            ("file size", fmt_bytes(rep["file_bytes"]))]
    if "stacks" in rep:
        rows.append(("stacks referenced", f"{rep['stacks']:,}"))
    if "box" in rep:
        rows.append(("box", ", ".join(f"{b} px" for b in rep["box"]) or "-"))
    if "psize_A" in rep:
        rows.append(("pixel size", ", ".join(f"{p:g} Å" for p in rep["psize_A"]) or "-"))
    out.print(kv_table(rows, title=str(cs)))
    stat = rep.get("stats", {})
    cols = ("field", "dtype", "min", "max", "mean") if stats else ("field", "dtype")
    for group, fields in rep["groups"].items():
        t = table(f"{group} ({len(fields)})", cols)
        for f in fields:
            dt = f["dtype"] + (f"×{'×'.join(map(str, f['shape']))}" if f["shape"] else "")
            if not stats:
                t.add_row(f["name"], dt)
                continue
            s = stat.get(f["name"], {})
            if "distinct" in s:
                ex = s.get("example", "")
                ex = ex if len(ex) <= 40 else "…" + ex[-39:]
                t.add_row(f["name"], dt, f"{s['distinct']:,} distinct", ex, "")
            elif s:
                mean = "-" if s["mean"] is None else f"{s['mean']:.6g}"
                nan = f" ({s['nan']:,} NaN)" if s.get("nan") else ""
                t.add_row(f["name"], dt, _num(s["min"]), _num(s["max"]), mean + nan)
            else:
                t.add_row(f["name"], dt, "-", "-", "-")
        out.print(t)


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:.6g}"


def _field_list(fields: Optional[List[str]]) -> list[str]:
    out: list[str] = []
    for f in fields or []:
        out += [x.strip() for x in f.split(",") if x.strip()]
    return out


@app.command("show")
def show(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    fields: Optional[List[str]] = typer.Option(None, "--fields", "-F",
                                               help="Fields to show, comma-separated or repeated; "
                                                    "'ctf/' takes a whole group [default: the first 8]."),
    head: int = typer.Option(10, "--head", "-n", min=0, help="Rows to show."),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="Show only rows matching this expression."),
    passthrough: Optional[Path] = _PASS,
    as_json: bool = _JSON,
) -> None:
    """A readable table of the first rows."""
    ds = _load(cs, passthrough)
    if where:
        ds = ds.query(where)
    names = _field_list(fields)
    sel = ds[names] if names else ds[list(ds.fields[:8])]
    rows = sel.data[:head]
    if as_json:
        emit_json({"rows": len(ds), "fields": list(sel.fields),
                   "data": [{n: _cell_json(r[n]) for n in sel.fields} for r in rows]})
        return
    title = f"{cs}: {min(head, len(ds)):,} of {len(ds):,} rows"
    if len(sel.fields) <= 6:
        t = table(title, tuple(sel.fields))
        for r in rows:
            t.add_row(*[_cell(r[n]) for n in sel.fields])
    else:
        # Many fields read better as rows: one column per particle.
        t = table(title, ("field", *[f"row {i}" for i in range(len(rows))]))
        for n in sel.fields:
            t.add_row(n, *[_cell(r[n]) for r in rows])
    for col in t.columns:
        col.overflow = "fold"  # wrap long values (uids, paths) rather than cut them
    out = console()
    out.print(t)
    more = len(ds.fields) - len(sel.fields)
    if not names and more > 0:
        out.print(f"({more} more fields; choose with --fields)")


def _cell(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if hasattr(v, "shape") and v.shape:
        return "[" + ", ".join(_cell(x) for x in v.tolist()) + "]"
    if isinstance(v, float) or (hasattr(v, "dtype") and v.dtype.kind == "f"):
        return f"{float(v):.6g}"
    return str(v.item() if hasattr(v, "item") else v)


def _cell_json(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v.tolist() if hasattr(v, "tolist") else v


# ---- selection and set algebra ----------------------------------------------------

@app.command("filter")
def filter_(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    where: str = typer.Option(..., "--where", "-w",
                              help="Condition, e.g. \"alignments2D/class in [1, 4, 7]\" or "
                                   "\"ctf/df1_A < 20000 and ctf/type == 'patchctf'\"."),
    output: Path = _OUT,
    passthrough: Optional[Path] = typer.Option(None, "--passthrough",
                                               help="Passthrough .cs whose fields the condition may use; "
                                                    "the output keeps only CS's fields (rows the passthrough "
                                                    "lacks are dropped).", dir_okay=False),
    fmt: Optional[str] = CS_FORMAT,
    force: bool = _FORCE, quiet: bool = _QUIET, as_json: bool = _JSON,
) -> None:
    """Keep the rows matching a condition (a small safe expression language, never eval).

    Comparisons (== != < <= > >=), `in [..]`, `not in [..]`, `between A and B`,
    and/or/not, parentheses, + - * / (spaced: field names hold '/'), abs(),
    numbers and 'strings'; field[0] picks an element of an array field.
    """
    from stacktools.cs.query import parse
    parse(where)  # a malformed condition fails before anything is read
    fmt = cs_format(fmt)
    _check_output(output, [cs, passthrough], force)
    with _steps("filter", 3, quiet) as step:
        ds = _load(cs)
        step()
        kept = ds.query(where, _load(passthrough) if passthrough is not None else None)
        step()
        kept.save(output, overwrite=force, format=fmt)
        step()
    _written(output, len(kept), as_json, {"input_rows": len(ds)})


def _set_op(op: str, a: Path, b: Path, output: Path, force: bool, quiet: bool, as_json: bool,
            fmt: str | None) -> None:
    fmt = cs_format(fmt)
    _check_output(output, [a, b], force)
    from stacktools.cs.dataset import CsDataset
    with _steps(op, 3, quiet) as step:
        da = _load(a)
        # intersect and subtract need only B's uids.
        db = _load(b) if op == "union" else CsDataset.load(b, fields=["uid"])
        step()
        res = getattr(da, op)(db)
        step()
        res.save(output, overwrite=force, format=fmt)
        step()
    _written(output, len(res), as_json, {"a_rows": len(da), "b_rows": len(db)})


@app.command("union")
def union(a: Path = typer.Argument(..., help="A.cs", dir_okay=False),
          b: Path = typer.Argument(..., help="B.cs", dir_okay=False),
          output: Path = _OUT, fmt: Optional[str] = CS_FORMAT, force: bool = _FORCE, quiet: bool = _QUIET,
          as_json: bool = _JSON) -> None:
    """A ∪ B by uid: A's rows, then B's rows whose uid is new. Fields must match
    (string widths may differ: the wider is kept)."""
    _set_op("union", a, b, output, force, quiet, as_json, fmt)


@app.command("intersect")
def intersect(a: Path = typer.Argument(..., help="A.cs", dir_okay=False),
              b: Path = typer.Argument(..., help="B.cs", dir_okay=False),
              output: Path = _OUT, fmt: Optional[str] = CS_FORMAT, force: bool = _FORCE,
              quiet: bool = _QUIET, as_json: bool = _JSON) -> None:
    """A ∩ B by uid: A's rows (A's fields, A's order) whose uid is in B."""
    _set_op("intersect", a, b, output, force, quiet, as_json, fmt)


@app.command("subtract")
def subtract(a: Path = typer.Argument(..., help="A.cs", dir_okay=False),
             b: Path = typer.Argument(..., help="B.cs", dir_okay=False),
             output: Path = _OUT, fmt: Optional[str] = CS_FORMAT, force: bool = _FORCE,
             quiet: bool = _QUIET, as_json: bool = _JSON) -> None:
    """A − B by uid: A's rows whose uid is not in B."""
    _set_op("subtract", a, b, output, force, quiet, as_json, fmt)


@app.command("join")
def join(main: Path = typer.Argument(..., help="Main .cs (e.g. J7_particles_selected.cs).", dir_okay=False),
         passthrough: Path = typer.Argument(..., help="Passthrough .cs.", dir_okay=False),
         output: Path = _OUT, fmt: Optional[str] = CS_FORMAT, force: bool = _FORCE,
         quiet: bool = _QUIET, as_json: bool = _JSON) -> None:
    """Inner join on uid: the job's full particle view. MAIN's row order is kept and
    clashing fields are taken from MAIN."""
    fmt = cs_format(fmt)
    _check_output(output, [main, passthrough], force)
    with _steps("join", 3, quiet) as step:
        dm, dp = _load(main), _load(passthrough)
        step()
        res = dm.join(dp)
        step()
        res.save(output, overwrite=force, format=fmt)
        step()
    _written(output, len(res), as_json, {"main_rows": len(dm), "passthrough_rows": len(dp),
                                         "fields": len(res.fields)})


@app.command("dedupe")
def dedupe(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    output: Path = _OUT,
    distance: Optional[float] = typer.Option(None, "--distance", "-d", min=0.0,
                                             help="Also remove particles whose centres are closer than this "
                                                  "many Å on the same micrograph."),
    by: Optional[str] = typer.Option(None, "--by", help="Field ranking close particles "
                                                       "(e.g. pick_stats/ncc_score) [default: earlier row wins]."),
    lowest: bool = typer.Option(False, "--lowest", help="Lower values of --by are better."),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough",
                                               help="Passthrough .cs holding location/* (and --by); "
                                                    "the output keeps only CS's fields.", dir_okay=False),
    fmt: Optional[str] = CS_FORMAT,
    force: bool = _FORCE, quiet: bool = _QUIET, as_json: bool = _JSON,
) -> None:
    """Remove repeated uids (the first row is kept) and, with --distance, picks closer
    than D Å to a better one on the same micrograph (like Remove Duplicate Particles)."""
    if distance is not None and distance <= 0:
        raise typer.BadParameter("--distance must be more than 0 Å")
    fmt = cs_format(fmt)
    _check_output(output, [cs, passthrough], force)
    with _steps("dedupe", 3, quiet) as step:
        ds = _load(cs)
        step()
        done = ds.remove_duplicates(distance, by=by, highest=not lowest,
                                    passthrough=_load(passthrough) if passthrough is not None else None)
        res = done.result
        step()
        res.save(output, overwrite=force, format=fmt)
        step()
    extra = {"input_rows": len(ds), "removed_repeated_uid": done.removed_repeated_uid}
    if distance is not None:
        extra.update({"close_pairs": done.close_pairs, "removed_by_distance": done.removed_by_distance})
    _written(output, len(res), as_json, extra)


@app.command("split")
def split(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Directory for the subsets (created).",
                                    file_okay=False),
    by: Optional[str] = typer.Option(None, "--by", help="Field to split by, one file per value "
                                                       "(e.g. alignments2D/class, ctf/exp_group_id)."),
    into: Optional[int] = typer.Option(None, "--into", "-n", min=1, help="Number of random subsets."),
    seed: int = typer.Option(0, "--seed", help="Random seed for --into."),
    max_files: int = typer.Option(1000, "--max-files", min=1,
                                  help="Refuse to write more files than this (a float field has as many "
                                       "values as rows)."),
    fmt: Optional[str] = CS_FORMAT,
    force: bool = _FORCE, quiet: bool = _QUIET, as_json: bool = _JSON,
) -> None:
    """Split by a field's value (one file per value) or into N random subsets of near-equal size.

    Files are named STEM_FIELD_VALUE.cs (e.g. P1_particles_class_4.cs) or STEM_subsetK.cs.
    """
    if (by is None) == (into is None):
        raise typer.BadParameter("give exactly one of --by FIELD and --into N")
    fmt = cs_format(fmt)
    ds = _load(cs)
    named = ds.split_files(cs.stem, by=by, into=into, seed=seed, max_files=max_files)
    output_dir.mkdir(parents=True, exist_ok=True)
    outs = [output_dir / name for name, _, _ in named]
    for o in outs:
        _check_output(o, [cs], force)
    with _steps("split", len(named), quiet) as step:
        for o, (_, _, part) in zip(outs, named):
            part.save(o, overwrite=force, format=fmt)
            step()
    files = [{"output": str(o), "value": k, "rows": len(v)} for o, (_, k, v) in zip(outs, named)]
    if as_json:
        emit_json({"input_rows": len(ds), "files": files})
        return
    t = table(f"{cs}: {len(ds):,} rows into {len(files)} files", ("file", by or "subset", "rows"))
    for f in files:
        t.add_row(f["output"], str(f["value"]), f"{f['rows']:,}")
    console().print(t)


@app.command("sample")
def sample(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    output: Path = _OUT,
    count: Optional[int] = typer.Option(None, "--count", "-n", min=0, help="Number of rows to draw."),
    fraction: Optional[float] = typer.Option(None, "--fraction", min=0.0, max=1.0, help="Share of rows to draw."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    fmt: Optional[str] = CS_FORMAT,
    force: bool = _FORCE, as_json: bool = _JSON,
) -> None:
    """A random subset of N rows or a fraction of them (seeded), in the original order."""
    if (count is None) == (fraction is None):
        raise typer.BadParameter("give exactly one of --count N and --fraction F")
    fmt = cs_format(fmt)
    _check_output(output, [cs], force)
    ds = _load(cs)
    res = ds.sample(count, fraction, seed)
    res.save(output, overwrite=force, format=fmt)
    _written(output, len(res), as_json, {"input_rows": len(ds), "seed": seed})


# ---- conversion -------------------------------------------------------------------

@app.command("to-star")
def to_star(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    output: Path = _OUT,
    passthrough: Optional[Path] = _PASS,
    mrcs: bool = typer.Option(False, "--mrcs", help="Name .mrc stacks as .mrcs (RELION reads stacks only "
                                                    "under that extension; see --link-mrcs)."),
    link_mrcs: bool = typer.Option(False, "--link-mrcs", help="Also make the .mrcs names exist: symlinks "
                                   "x.mrcs -> x.mrc beside each stack (or in --link-dir). An existing "
                                   "correct link is kept; any other file there is an error. Implies --mrcs."),
    link_dir: Optional[Path] = typer.Option(None, "--link-dir", file_okay=False,
                                            help="Make the --link-mrcs links in this directory and name "
                                                 "them there in the STAR file [default: beside each stack]."),
    replace_prefix: Optional[Tuple[str, str]] = typer.Option(
        None, "--replace-prefix", metavar="OLD NEW",
        help="Stack and micrograph paths that start with OLD start with NEW in the STAR file "
             "(pyem's --stack-path/--micrograph-path do this per kind) [default: paths as in the .cs]."),
    invert_y: bool = typer.Option(False, "--invert-y", help="Write rlnCoordinateY as height - y, as pyem's "
                                  "csparc2star does by default: for micrographs motion-corrected by "
                                  "MotionCor2/RELION rather than CryoSPARC."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", file_okay=False,
                                               help="CryoSPARC project directory, for --link-mrcs "
                                                    "[default: the parent of the .cs file's job directory]."),
    force: bool = _FORCE, quiet: bool = _QUIET, as_json: bool = _JSON,
) -> None:
    """RELION 3.1 STAR (data_optics + data_particles), fields mapped as pyem's csparc2star does."""
    _check_output(output, [cs, passthrough], force)
    from stacktools.api import cs_to_star
    from stacktools.formats.cs import read_cs
    rows = len(read_cs(cs, mmap=True))
    with count_progress("to-star", rows, quiet or not sys.stderr.isatty()) as advance:
        res = cs_to_star(cs, output, passthrough=passthrough, mrcs=mrcs,
                         link_mrcs=(link_dir or True) if link_mrcs or link_dir else False,
                         prefix_map=tuple(replace_prefix) if replace_prefix else None,
                         invert_y=invert_y, project_dir=project_dir, overwrite=force, progress=advance)
    extra = {"optics_groups": res["optics_groups"], "columns": res["columns"]}
    if "links" in res:
        extra["links_made"] = res["links"]["made"]
        extra["links_existing"] = res["links"]["existing"]
    _written(output, res["particles"], as_json, extra)


@app.command("from-star")
def from_star(
    star: Path = typer.Argument(..., help="RELION particle .star file (3.0 or 3.1).", dir_okay=False),
    output: Path = _OUT,
    uid_column: Optional[str] = typer.Option(None, "--uid-column", help="STAR column of unique integers to use "
                                             "as uid [default: a 64-bit hash of each rlnImageName, the "
                                             "same on every import]."),
    psize: Optional[float] = typer.Option(None, "--psize", min=0.0, help="Pixel size in Å, for a STAR file "
                                          "that gives none [default: from the file]."),
    box: Optional[int] = typer.Option(None, "--box", min=1, help="Box in pixels, for a STAR file without "
                                      "rlnImageSize whose stacks are absent [default: rlnImageSize, else "
                                      "the stacks' MRC headers]."),
    micrograph_shape: Optional[Tuple[int, int]] = typer.Option(
        None, "--micrograph-shape", metavar="HEIGHT WIDTH",
        help="Micrograph size in pixels, for coordinates whose micrographs are absent "
             "[default: each micrograph's MRC header]."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", file_okay=False,
                                               help="RELION project directory that rlnImageName and "
                                                    "rlnMicrographName start from [default: above the STAR "
                                                    "file's Type/jobNNN/ directory, else the current one]."),
    allow_premultiplied: bool = typer.Option(False, "--allow-premultiplied",
                                             help="Convert CTF-premultiplied images (CryoSPARC cannot "
                                                  "know they are; it would apply the CTF again)."),
    fmt: Optional[str] = typer.Option("numpy", "--format", help="Format of the .cs written: numpy or csdat.",
                                      case_sensitive=False),
    force: bool = _FORCE, as_json: bool = _JSON,
) -> None:
    """RELION particles into a .cs (blob/*, ctf/*, location/*, alignments3D/* or alignments2D/*).

    Columns with no .cs field are named in one warning line on stderr.
    """
    import warnings

    fmt = cs_format(fmt)
    _check_output(output, [star], force)
    from stacktools.api import star_to_cs
    from stacktools.errors import DroppedColumnsWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DroppedColumnsWarning)
        data = star_to_cs(star, output, uid_column=uid_column, psize=psize, box=box,
                          micrograph_shape=tuple(micrograph_shape) if micrograph_shape else None,
                          project_dir=project_dir, allow_premultiplied=allow_premultiplied,
                          format=fmt or "numpy", overwrite=force)
    dropped = [c for w in caught if isinstance(w.message, DroppedColumnsWarning) for c in w.message.columns]
    for w in caught:
        sys.stderr.write(f"stacktools: warning: {w.message}\n")
    _written(output, len(data), as_json, {"fields": len(data.dtype.names)}
             | ({"dropped_columns": dropped} if as_json else {}))


@app.command("to-csv")
def to_csv(
    cs: Path = typer.Argument(..., help=".cs file.", dir_okay=False),
    output: Path = _OUT,
    parquet: bool = typer.Option(False, "--to-parquet", help="Write Parquet (needs pyarrow) instead of CSV."),
    passthrough: Optional[Path] = _PASS,
    force: bool = _FORCE, quiet: bool = _QUIET, as_json: bool = _JSON,
) -> None:
    """CSV (or Parquet) with one column per field; array fields become NAME[0], NAME[1], …"""
    _check_output(output, [cs, passthrough], force)
    with _steps("to-parquet" if parquet else "to-csv", 2, quiet) as step:
        ds = _load(cs, passthrough)
        step()
        (ds.to_parquet if parquet else ds.to_csv)(output, overwrite=force)
        step()
    _written(output, len(ds), as_json, {"format": "parquet" if parquet else "csv"}, what="rows")

