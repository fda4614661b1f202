"""Remove duplicate particles: repeated uids, or picks too close on one micrograph.

Distance deduplication works like CryoSPARC's Remove Duplicate Particles: of
particles on the same micrograph whose centres are closer than a distance, the
best by a chosen field is kept. The result is exactly that of the greedy rule
"visit particles from best to worst; keep one unless a kept particle lies within
the distance", computed without a per-particle Python loop: close pairs are found
by bucketing centres into a grid of cells one distance wide, and the greedy rule
is resolved in rounds over all pairs at once (a particle better than every
undecided neighbour is kept, its neighbours are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stacktools.cs.rows import dedupe_uid, field_matrix, require_fields
from stacktools.errors import FieldError

__all__ = ["dedupe_uid", "dedupe_distance", "particle_centres_A", "close_pairs", "DedupeResult",
           "Deduplicated"]

CENTRE_FIELDS = ("location/center_x_frac", "location/center_y_frac", "location/micrograph_shape")


@dataclass
class DedupeResult:
    """What a distance deduplication kept.

    ``keep`` is a boolean mask over the input rows; ``pairs`` the number of close
    pairs found.
    """

    keep: np.ndarray
    pairs: int

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


@dataclass
class Deduplicated:
    """What :meth:`CsDataset.remove_duplicates` kept, and what it removed by each rule."""

    result: object  # the CsDataset kept
    removed_repeated_uid: int
    close_pairs: int = 0
    removed_by_distance: int = 0


def micrograph_codes(data: np.ndarray, label: str = "dataset") -> np.ndarray:
    """An integer per row naming its micrograph (from ``location/micrograph_uid``,
    else ``location/micrograph_path``)."""
    names = data.dtype.names or ()
    for f in ("location/micrograph_uid", "location/micrograph_path"):
        if f in names:
            _, codes = np.unique(data[f], return_inverse=True)
            return codes.astype(np.int64).ravel()
    raise FieldError(f"{label}: missing field 'location/micrograph_uid' "
                     "(or 'location/micrograph_path'): cannot tell micrographs apart")


def particle_centres_A(data: np.ndarray, label: str = "dataset") -> np.ndarray:
    """Particle centres on their micrographs in Å, shape ``(n, 2)`` as (x, y).

    ``location/center_*_frac`` are fractions of the micrograph, whose shape is
    stored as (ny, nx); the pixel size is ``location/micrograph_psize_A`` (or
    ``blob/psize_A`` when a file lacks it).
    """
    require_fields(data, CENTRE_FIELDS, label)
    names = data.dtype.names
    if "location/micrograph_psize_A" in names:
        psize = data["location/micrograph_psize_A"].astype(np.float64)
    elif "blob/psize_A" in names:
        psize = data["blob/psize_A"].astype(np.float64)
    else:
        raise FieldError(f"{label}: missing field 'location/micrograph_psize_A'")
    shape = field_matrix(data, "location/micrograph_shape", np.float64)
    x = data["location/center_x_frac"].astype(np.float64) * shape[:, -1] * psize
    y = data["location/center_y_frac"].astype(np.float64) * shape[:, 0] * psize
    return np.stack([x, y], axis=1)


def close_pairs(groups: np.ndarray, xy: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, in the same group closer than ``distance``.

    Centres are bucketed into square cells ``distance`` wide; a close pair lies in
    the same or an adjacent cell, so only those candidates are measured.
    """
    n = len(xy)
    if n < 2 or distance <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cells = np.floor((xy - xy.min(axis=0)) / distance).astype(np.int64) + 1
    span = int(cells.max()) + 2
    key = (groups.astype(np.int64) * span + cells[:, 0]) * span + cells[:, 1]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first_i, first_j = [], []
    # Half of the 3x3 neighbourhood (and the cell itself) finds each pair once.
    for dx, dy in ((0, 0), (0, 1), (1, -1), (1, 0), (1, 1)):
        target = key + dx * span + dy
        lo = np.searchsorted(sorted_key, target, side="left")
        hi = np.searchsorted(sorted_key, target, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            continue
        src = np.repeat(np.arange(n), counts)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        dst = order[np.arange(total) + starts]
        if (dx, dy) == (0, 0):
            sel = src < dst
            src, dst = src[sel], dst[sel]
        d2 = ((xy[src] - xy[dst]) ** 2).sum(axis=1)
        sel = d2 < distance * distance
        first_i.append(src[sel])
        first_j.append(dst[sel])
    if not first_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.concatenate(first_i)
    j = np.concatenate(first_j)
    return np.minimum(i, j), np.maximum(i, j)


def greedy_keep(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Resolve close pairs greedily by ``rank`` (lower is better); return a keep mask.

    Equivalent to visiting rows in rank order and keeping each one no kept row is
    paired with. Each round keeps every undecided row that outranks all its
    undecided neighbours and drops their neighbours.
    """
    keep = np.ones(n, dtype=bool)
    undecided = np.zeros(n, dtype=bool)
    undecided[i] = undecided[j] = True
    while len(i):
        # The better end of each pair (lower rank) "beats" the other.
        i_wins = rank[i] < rank[j]
        loser = np.where(i_wins, j, i)
        beaten = np.zeros(n, dtype=bool)
        beaten[loser] = True
        winners = undecided & ~beaten
        # Rows beaten by a winner are dropped; winners are kept.
        winner_pair = winners[i] | winners[j]
        dropped = np.where(winners[i], j, i)[winner_pair]
        keep[dropped] = False
        undecided[winners] = False
        undecided[dropped] = False
        live = undecided[i] & undecided[j]
        i, j = i[live], j[live]
        # Rows left with no live pairs are kept.
        still = np.zeros(n, dtype=bool)
        still[i] = still[j] = True
        undecided &= still
    return keep


def dedupe_distance(data: np.ndarray, distance_A: float, *, by: str | None = None,
                    highest: bool = True, label: str = "dataset") -> DedupeResult:
    """Find particles closer than ``distance_A`` to a better one on the same micrograph.

    Parameters
    ----------
    data
        Dataset with ``location/*`` fields (a particles file joined with its
        passthrough, as a rule).
    distance_A
        Minimum separation of the centres, in Å.
    by
        Field that says which particle of a close pair is better, e.g.
        ``pick_stats/ncc_score`` or ``alignments2D/class_posterior``. Without one the
        earlier row wins.
    highest
        Whether a higher value of ``by`` is better (else lower is).
    label
        Name of the dataset, for error messages.

    Returns
    -------
    DedupeResult
        ``keep`` selects the rows to keep; apply it with ``data[result.keep]``.
    """
    if not distance_A > 0:
        raise ValueError(f"distance must be positive, got {distance_A}")
    n = len(data)
    groups = micrograph_codes(data, label)
    xy = particle_centres_A(data, label)
    i, j = close_pairs(groups, xy, float(distance_A))
    if by is not None:
        require_fields(data, [by], label)
        if data.dtype.fields[by][0].shape or data.dtype.fields[by][0].kind not in "uif":
            raise FieldError(f"{label}: field {by!r} is not a number per row")
        score = data[by].astype(np.float64)
        score = -score if highest else score
        # Ties (and NaN scores, ranked last) fall back to row order.
        score = np.where(np.isnan(score), np.inf, score)
        order = np.lexsort((np.arange(n), score))
    else:
        order = np.arange(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return DedupeResult(greedy_keep(n, i, j, rank), int(len(i)))
