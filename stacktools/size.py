"""How big a particle dataset is: the guide's formula and the exact figures.

The quick estimate is CryoSPARC's ``(4·box² + nsymbt + header_length) · N``. The
exact figures come from the stacks' headers and file sizes, never from pixel data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stacktools.particles import ParticleSet

DEFAULT_NSYMBT = 128
DEFAULT_HEADER_LENGTH = 1024
# Boxes people Fourier-crop to (even, with small prime factors for fast FFTs).
COMMON_BOXES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
SHRINK_BOXES_SHOWN = 4


def formula_bytes(box: int, count: int, nsymbt: int = DEFAULT_NSYMBT,
                  header_length: int = DEFAULT_HEADER_LENGTH) -> int:
    """The CryoSPARC guide's estimate of a particle stack's size in bytes.

    Parameters
    ----------
    box
        Box size in pixels.
    count
        Number of particles, N.
    nsymbt
        Extended-header bytes counted per particle (the guide uses 128).
    header_length
        Header bytes counted per particle (the guide uses 1024).

    ``formula_bytes(256, 1_000_000) == 263_296_000_000``.
    """
    if box < 0 or count < 0 or nsymbt < 0 or header_length < 0:
        raise ValueError("box, count, nsymbt and header_length must be non-negative")
    return (4 * box * box + nsymbt + header_length) * count


@dataclass
class SizeReport:
    """Exact size figures for a particle set.

    ``cache_bytes`` is what a cache copies today (every referenced stack whole);
    ``consolidated_bytes`` is what the selected particles take once consolidated
    one output stack per source stack (pixels in their own mode plus a 1024-byte
    header each).
    """

    particles: int
    stacks: int
    box: int
    modes: dict[str, int]
    formula_bytes: int
    cache_bytes: int
    consolidated_bytes: int
    stack_particles: int
    extended_header_bytes: int
    per_stack: list[dict] = field(default_factory=list)
    shrink: list[dict] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        return self.cache_bytes - self.consolidated_bytes

    @property
    def saved_fraction(self) -> float:
        return self.saved_bytes / self.cache_bytes if self.cache_bytes else 0.0

    def choices(self) -> list[dict]:
        """Every way to hold the set, each a dict with ``option``, ``box``, ``dtype``
        (``keep`` or ``float16``) and ``bytes``: the whole stacks (what a cache copies
        today), the selected particles alone, then the :attr:`shrink` rows."""
        return [{"option": "whole stacks", "box": self.box, "dtype": "keep", "bytes": self.cache_bytes},
                {"option": "selected only", "box": self.box, "dtype": "keep", "bytes": self.consolidated_bytes},
                *self.shrink]

    def to_dict(self, per_stack: bool = False) -> dict:
        d = asdict(self)
        if not per_stack:
            d.pop("per_stack")
        d["saved_bytes"] = self.saved_bytes
        d["saved_fraction"] = round(self.saved_fraction, 6)
        return d


def size_particles(pset: "ParticleSet", *, validate: bool = True, nsymbt: int = DEFAULT_NSYMBT,
                   header_length: int = DEFAULT_HEADER_LENGTH) -> SizeReport:
    """Size a particle set from its stacks' headers.

    Parameters
    ----------
    pset
        The particle set.
    validate
        Check indices, boxes and truncation first (headers only; cheap).
    nsymbt, header_length
        Per-particle overheads used for the formula estimate.
    """
    import numpy as np

    from stacktools.formats.mrc import HEADER_BYTES, mode_name

    table = pset.check_table() if validate else pset.header_table()
    nstacks = len(table)
    counts = (np.bincount(pset.stack_codes, minlength=nstacks) if len(pset)
              else np.zeros(nstacks, np.int64))
    # Per stack only what the report lists; every sum is one NumPy call, and the
    # pixel type is looked up once per distinct mode.
    out = np.where(counts > 0, HEADER_BYTES + counts * table.particle_bytes, 0)
    modes: dict[str, int] = {}
    distinct, first = np.unique(table.mode, return_index=True)
    for m in distinct[np.argsort(first)].tolist():  # in order of first appearance
        name = mode_name(m)
        modes[name] = modes.get(name, 0) + int(counts[table.mode == m].sum())
    per_stack = [{"path": p, "selected": n, "nz": nz, "mode": m, "file_bytes": f, "consolidated_bytes": o}
                 for p, n, nz, m, f, o in zip(table.paths, counts.tolist(), table.nz.tolist(),
                                              table.mode.tolist(), table.file_size.tolist(), out.tolist())]
    box = pset.box() if len(pset) else (int(table.nx[0]) if nstacks else 0)
    return SizeReport(particles=len(pset), stacks=nstacks, box=box, modes=modes,
                      formula_bytes=formula_bytes(box, len(pset), nsymbt, header_length),
                      cache_bytes=int(table.file_size.sum()), consolidated_bytes=int(out.sum()),
                      stack_particles=int(table.nz.sum()), extended_header_bytes=int(table.nsymbt.sum()),
                      per_stack=per_stack, shrink=shrink_options(box, counts, table.itemsize))


def shrink_boxes(box: int) -> list[int]:
    """The boxes below ``box`` worth showing a Fourier crop to: the largest common
    ones and half the box (rounded down to even), largest first."""
    boxes = {b for b in COMMON_BOXES if b < box}
    boxes = set(sorted(boxes)[-SHRINK_BOXES_SHOWN:])
    half = box // 2 - (box // 2) % 2
    if half >= 2:
        boxes.add(half)
    return sorted(boxes, reverse=True)


def shrink_options(box: int, counts, itemsize) -> list[dict]:
    """What the selected particles would take consolidated and shrunk.

    One row for float16 output at the full box, then for each of :func:`shrink_boxes`
    a Fourier crop to it in the stacks' own pixel types and in float16. Bytes count a
    1024-byte header per non-empty output stack, as consolidation writes.

    Args:
        box: The set's box size.
        counts: Selected particles per stack.
        itemsize: Bytes per pixel of each stack.

    Returns:
        Dicts with ``option``, ``box``, ``dtype`` (``keep`` or ``float16``) and ``bytes``.
    """
    import numpy as np

    from stacktools.formats.mrc import HEADER_BYTES

    counts = np.asarray(counts, np.int64)
    headers = HEADER_BYTES * int((counts > 0).sum())
    # Bytes of one pixel position summed over the selected particles.
    kept = int(counts @ np.asarray(itemsize, np.int64))
    half = 2 * int(counts.sum())

    def total(b: int, per_position: int) -> int:
        return headers + per_position * b * b

    rows = [{"option": "selected only, float16", "box": box, "dtype": "float16", "bytes": total(box, half)}]
    for b in shrink_boxes(box):
        rows.append({"option": f"selected only, Fourier-cropped to {b}", "box": b, "dtype": "keep",
                     "bytes": total(b, kept)})
        rows.append({"option": f"selected only, Fourier-cropped to {b}, float16", "box": b,
                     "dtype": "float16", "bytes": total(b, half)})
    return rows
