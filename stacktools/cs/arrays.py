"""Vectorised helpers for structured arrays at the scale of millions of rows."""

from __future__ import annotations

import numpy as np

_SEED = np.uint64(0x9E3779B97F4A7C15)
_MUL = np.uint64(0xFF51AFD7ED558CCD)
_MUL2 = np.uint64(0xC4CEB9FE1A85EC53)


def factorize(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a fixed-width column and each row's code.

    Returns ``(uniques, codes)`` with ``uniques`` sorted and
    ``uniques[codes] == column``, like ``np.unique(column, return_inverse=True)``
    but several times faster on long byte strings such as ``blob/path``: rows are
    hashed 8 bytes at a time, and the result is checked exactly against the input
    (falling back to ``np.unique`` in the astronomically rare case of a collision).
    """
    n = len(column)
    if n == 0 or column.dtype.kind not in "SV" or column.dtype.itemsize <= 8:
        uniq, codes = np.unique(column, return_inverse=True)
        return uniq, codes.ravel().astype(np.int64)
    w = column.dtype.itemsize
    width = (w + 7) // 8 * 8
    # Copy the strings once into rows padded to whole 64-bit words.
    # (void copies are plain memcpy; string copies are several times slower)
    padded = np.zeros(n, dtype=[("s", f"V{w}"), ("pad", f"V{width - w}")] if width > w
                      else [("s", f"V{w}")])
    padded["s"] = column.view(f"V{w}")
    rows = padded.view(f"V{width}")
    words = padded.view(np.uint64).reshape(n, width // 8)
    # Runs of equal rows (the usual layout of an extract job's output) need hashing once.
    change = np.empty(n, bool)
    change[0] = True
    np.any(words[1:] != words[:-1], axis=1, out=change[1:])
    heads = np.flatnonzero(change)
    grouped = len(heads) < n // 2
    if not grouped:
        heads = np.arange(n)
    hw = rows[heads].view(np.uint64).reshape(-1, width // 8) if grouped else words
    h = np.full(len(heads), _SEED, np.uint64)
    for j in range(hw.shape[1]):
        h *= _MUL
        h += hw[:, j]
    h ^= h >> np.uint64(33)
    h *= _MUL2
    h ^= h >> np.uint64(29)
    _, first, head_codes = np.unique(h, return_index=True, return_inverse=True)
    head_codes = head_codes.ravel()
    if not np.array_equal(rows[heads[first]][head_codes].view(np.uint64).reshape(hw.shape), hw):
        uniq, codes = np.unique(column, return_inverse=True)
        return uniq, codes.ravel().astype(np.int64)
    uniques = column[heads[first]]
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[head_codes]
    if grouped:
        codes = np.repeat(codes, np.diff(np.append(heads, n)))
    return uniques[order], codes


# ---- matching 64-bit keys (uids) ------------------------------------------------------

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # no packed entry has its top bit set
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_MAX_LEVELS = 40


_S33 = np.uint64(33)


def _mix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: a bijection, so distinct keys stay distinct.

    ``x`` (often a column of wide records) is read once, into the new array the
    rest works on in place.
    """
    h = np.array(x, dtype=np.uint64, order="C")
    t = h >> _S33
    h ^= t
    h *= _FMIX1
    np.right_shift(h, _S33, out=t)
    h ^= t
    h *= _FMIX2
    np.right_shift(h, _S33, out=t)
    h ^= t
    return h


class KeyIndex:
    """A hash index of uint64 keys: where each key first occurs, for many keys at once.

    NumPy has no hash table; this one is built from whole-array operations. Keys are
    hashed by a bijection (:func:`_mix`) and scattered into a table twice the size
    of the input; each slot keeps one key, and the rest go to a smaller table with a
    fresh hash, until none is left (at 1,000,000 keys: eight tables, the first
    holding 80% of the keys). A table entry packs the bits of the hash its slot does
    not imply with the key's row, so one random read both finds and verifies a key.
    Matching a million uids costs two random passes over a 16 MiB table instead of
    two sorts. Results are exact (no probability of error): equal packed bits mean
    equal hashes, hence equal keys.

    Args:
        keys: uint64 keys (a ``uid`` column), in any order, possibly repeated.
    """

    def __init__(self, keys: np.ndarray):
        keys = np.asarray(keys, dtype=np.uint64)
        self.size = len(keys)
        self.repeats = False
        self._levels: list[tuple[np.ndarray, int, int, np.ndarray | None]] = []
        self._tail: tuple[np.ndarray, np.ndarray] | None = None
        self._dropped: list[np.ndarray] = []  # rows of repeated keys that are not the first
        rows: np.ndarray | None = None  # original row of each pending key (None: all, in order)
        g = _mix(keys)
        while len(g):
            if len(self._levels) == _MAX_LEVELS:
                self._add_tail(g, rows)
                break
            g, rows = self._add_level(g, rows)

    def _add_level(self, g: np.ndarray, rows: np.ndarray | None):
        n = len(g)
        r = n.bit_length()  # a local index < n never has all r low bits set
        k = r + 1           # twice as many slots as keys
        slot, e = _slot_and_entry(g, k, r)
        e |= np.arange(n, dtype=np.uint64)
        table = np.full(1 << k, _EMPTY, np.uint64)
        table[slot] = e  # among keys sharing a slot, any one stays
        lost = table[slot] != e
        self._levels.append((table, k, r, rows))
        if not lost.any():
            return g[:0], rows
        held = table[slot[lost]]
        mask = ~np.uint64((1 << r) - 1)
        same = (held & mask) == (e[lost] & mask)  # the slot holds this very key
        if same.any():
            # A repeated key: its first row must be the one kept (the smallest local
            # index, as locals follow row order).
            self.repeats = True
            np.minimum.at(table, slot[lost][same], e[lost][same])
            involved = np.flatnonzero(lost)[same]
            hit = np.unique(slot[involved])
            cand = np.flatnonzero(np.isin(slot, hit))
            now = table[slot[cand]]
            gone = cand[(now != e[cand]) & ((now & mask) == (e[cand] & mask))]
            self._dropped.append(gone if rows is None else rows[gone])
            lost[gone] = False
        pending = np.flatnonzero(lost)
        nxt = pending if rows is None else rows[pending]
        return _mix(g[pending]), nxt

    def _add_tail(self, g: np.ndarray, rows: np.ndarray | None) -> None:
        """The keys no table placed (only an adversarial input gets here): sorted."""
        rows = np.arange(len(g)) if rows is None else rows
        order = np.argsort(g, kind="stable")
        sg, sr = g[order], rows[order]
        first = np.ones(len(sg), bool)
        first[1:] = sg[1:] != sg[:-1]
        if not first.all():
            self.repeats = True
            self._dropped.append(sr[~first])
        self._tail = (sg[first], sr[first])

    def find(self, queries: np.ndarray) -> np.ndarray:
        """For each query, the first row holding it among the indexed keys, or -1 (int64)."""
        queries = np.asarray(queries, dtype=np.uint64)
        out = np.full(len(queries), -1, np.int64)
        if self.size == 0 or len(queries) == 0:
            return out
        g = _mix(queries)
        at: np.ndarray | None = None  # positions in ``out`` of the pending queries (None: all)
        for table, k, r, rows in self._levels:
            slot, e = _slot_and_entry(g, k, r)
            held = np.take(table, slot)
            low = np.uint64((1 << r) - 1)
            np.bitwise_and(held, ~low, out=slot.view(np.uint64))
            found = slot.view(np.uint64) == e
            local = (held[found] & low).view(np.int64)
            value = local if rows is None else rows[local]
            if at is None:
                out[found] = value
            else:
                out[at[found]] = value
            go = ~found & (held != _EMPTY)  # an empty slot: no later table has the key
            at = np.flatnonzero(go) if at is None else at[go]
            if not len(at):
                return out
            g = _mix(g[go])
        if self._tail is not None:
            at = np.arange(len(queries)) if at is None else at
            sg, sr = self._tail
            pos = np.minimum(np.searchsorted(sg, g), len(sg) - 1)
            hit = sg[pos] == g
            out[at[hit]] = sr[pos[hit]]
        return out

    def first_occurrences(self) -> np.ndarray:
        """Boolean mask over the indexed keys: True at the first row of each key."""
        keep = np.ones(self.size, bool)
        for rows in self._dropped:
            keep[rows] = False
        return keep


def _slot_and_entry(g: np.ndarray, k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """A hash's slot (its top ``k`` bits) and the rest of it, shifted to leave ``r``
    low bits free for a row; the top bit is always clear."""
    slot = (g >> np.uint64(64 - k)).astype(np.intp)
    e = g << np.uint64(k)
    e >>= np.uint64(k - r)
    return slot, e
