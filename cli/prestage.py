"""``stacktools cache prestage``: stage a queue of sets on the nodes placement chooses, on Dask.

Thin over :mod:`stacktools.cluster.prestage`; registered on the ``cache`` app.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import List, Optional

import typer

from stacktools.cli.options import ALLOW_OUTSIDE_PROJECT, PROJECT_DIR_HELP, dask_client
from stacktools.cli.output import byte_progress, console, emit_json, fmt_bytes, table


def prestage(
    nodes_file: Path = typer.Argument(..., help="Nodes file, as for `cache place`.", dir_okay=False),
    particles: List[Path] = typer.Argument(..., help="Particles .cs or RELION particle STAR files, in queue order.",
                                           dir_okay=False),
    dask: str = typer.Option(..., "--dask", metavar="ADDRESS",
                             help="The Dask cluster whose workers run on the nodes: a scheduler file, a scheduler "
                                  "address (tcp://host:8786) or local:N. A worker started with --resources "
                                  "node-NAME=1 is node NAME; else the node named by its $STACKTOOLS_NODE, else "
                                  "by its host name (short names match)."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    biggest_first: bool = typer.Option(False, "--biggest-first", help="Place the biggest set first "
                                       "[default: the order given]."),
    hold: bool = typer.Option(False, "--hold", help="Keep each set pinned on its node for as long as the worker "
                                                    "lives; staging it again without --hold unpins it "
                                                    "[default: off, not pinned]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Copy each set into the SSD cache of the node `cache place` chooses, on that node's Dask worker.

    Runs each set's `cache sync` on a worker of its node and reports per node what
    was copied. Exit status 1 if a set fits nowhere or its node has no worker in the
    cluster (reported, not staged).
    """
    from stacktools.api import prestage_sets

    quiet = quiet or as_json or not sys.stderr.isatty()
    with dask_client(dask) as client, contextlib.ExitStack() as bars:
        result = prestage_sets(client, nodes_file, particles, project_dir=project_dir,
                               order="biggest" if biggest_first else "given", hold=hold,
                               progress_for=lambda total: bars.enter_context(
                                   byte_progress("prestaging", total, quiet)),
                               allow_outside_project=allow_outside_project)
    if as_json:
        d = result.to_dict()
        d["nodes_file"] = str(nodes_file)
        emit_json(d)
    else:
        _print(result)
    if not result.ok:
        raise typer.Exit(1)


def _print(result) -> None:
    out = console()
    t = table("prestage", ("node", "workers", "set", "copied", "already cached", "pinned"))
    for n in result.nodes:
        if n.missing and n.waiting:
            for label in n.waiting:
                t.add_row(n.node, "missing from the cluster", label, "not staged", "-", "-")
            continue
        for s in n.sets:
            t.add_row(n.node, f"{len(n.workers)}", s["set"], f"{s['copied']:,} files, {fmt_bytes(s['bytes_copied'])}",
                      f"{s['reused']:,} files", "yes" if s["pinned"] else "no")
    out.print(t)
    for n in result.nodes:
        if n.sets:
            out.print(f"node {n.node}: copied {fmt_bytes(n.bytes_copied)}")
    if result.missing_nodes:
        out.print(f"nodes missing from the cluster (their sets not staged): {', '.join(result.missing_nodes)}")
    if result.unplaced:
        out.print(f"fits nowhere: {', '.join(result.unplaced)}")
