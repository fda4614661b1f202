"""``stacktools cache place``: which node's SSD cache should take each set.

Thin over :mod:`stacktools.placement`; registered on the ``cache`` app.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stacktools.cli.options import PROJECT_DIR_HELP
from stacktools.cli.output import console, emit_json, fmt_bytes, kv_table, table


def place(
    nodes_file: Path = typer.Argument(..., help="Nodes file (TOML or JSON): name, quota_mb, reserve_mb "
                                      "and ssd_path or inventory for each [[node]].", dir_okay=False),
    particles: List[Path] = typer.Argument(...,
                                     help="Particles .cs or RELION particle STAR files, in queue order.",
                                     dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    biggest_first: bool = typer.Option(False, "--biggest-first", help="Place the biggest set first "
                                       "[default: the order given]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Recommend a node for each set: fewest bytes to copy among the nodes where it fits.

    Several sets are placed as one queue that runs together: each placement is
    applied to its node's snapshot before the next set is placed, so no node gets
    more than its SSD can hold. Copies nothing. Exit status 1 if a set fits nowhere.
    """
    from stacktools.placement import load_nodes, place_queue, queue_from_cs

    nodes = load_nodes(nodes_file)
    qp = place_queue(queue_from_cs(particles, project_dir), nodes,
                     order="biggest" if biggest_first else "given")
    if as_json:
        d = qp.to_dict()
        d["nodes_file"] = str(nodes_file)
        emit_json(d)
    else:
        _print(qp)
    if qp.unplaced:
        raise typer.Exit(1)


def _cell(n: int) -> str:
    """fmt_bytes on two lines, so that tables stay narrow."""
    return fmt_bytes(n).replace(" (", "\n(", 1)


def _print(qp) -> None:
    out = console()
    for p in qp.placements:
        t = table(f"{p.label}: {p.files:,} stacks, {fmt_bytes(p.bytes)} → {p.node or 'no node'}",
                  ("node", "fits", "to copy", "already cached", "removed first"))
        for c in p.candidates:
            t.add_row(("* " if c.node == p.node else "  ") + c.node, "yes" if c.fits else "no",
                      _cell(c.bytes_to_copy), _cell(c.bytes_cached),
                      _cell(c.bytes_removed) if c.fits else "-")
        out.print(t)
        out.print(f"chosen {p.reason}" if p.node else p.reason)
        for c in p.candidates:
            out.print(f"  {c.node}: {c.reason}")
        chosen = p.chosen
        if chosen is not None and (chosen.expire or chosen.evict):
            out.print(f"  {p.node} would remove (expired, then least recently used):")
            for e in chosen.expire + chosen.evict:
                out.print(f"    {e.key} ({fmt_bytes(e.size)})")
        out.print()
    for n in qp.nodes:
        rows = [("sets", ", ".join(n.sets) or "none"), ("to copy", fmt_bytes(n.bytes_to_copy)),
                ("expired or evicted", fmt_bytes(n.bytes_removed)),
                ("cache before → after", f"{fmt_bytes(n.used_bytes_before)} → {fmt_bytes(n.used_bytes_after)}"),
                ("quota", "none" if n.quota_bytes is None else fmt_bytes(n.quota_bytes)),
                ("free after", fmt_bytes(n.free_bytes_after)), ("reserve", fmt_bytes(n.reserve_bytes))]
        out.print(kv_table(rows, title=f"node {n.node} after the queue ({n.source})"))
    out.print(f"queue order: {qp.order}")
    if qp.unplaced:
        out.print(f"fits nowhere: {', '.join(qp.unplaced)}")
