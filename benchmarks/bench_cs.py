""".cs operations at 1,000,000 rows: stacktools against np.load and cryosparc-tools.

Run: python -m benchmarks.bench_cs [--rows 1000000] [--repeat 5]

Data (generated in a temporary directory, deleted afterwards): A, a refinement-like
particles file (uid, blob/*, ctf/*, alignments3D/*; 1M rows); B, a file of the same
dtype sharing half of A's uids; P, a passthrough (location/*, pick_stats/*) for
every uid of A, shuffled. Warm page cache. Each of --repeat rounds runs every
stacktools case and every np.load baseline once; a ratio is the median over rounds
of (case / its baseline in the same round). cryosparc-tools: best of --repeat.

"np.load" is the time to load what an operation reads (A, or A and B); the
stacktools rows "read + op" include reading their inputs, as the CLI does (before
writing). cryosparc-tools rows use cryosparc.dataset.Dataset on the same files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Results, best_of, command, stacktools_command
from stacktools.cs import rows as ds
from stacktools.cs.dataset import CsDataset
from stacktools.cs.info import cs_info
from stacktools.demo import BLOB_DTYPE, CTF_DTYPE, LOCATION_DTYPE, PICK_DTYPE
from stacktools.formats.cs import read_cs

ALIGN3D = [("alignments3D/split", "<u4"), ("alignments3D/shift", "<f4", (2,)),
           ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4"),
           ("alignments3D/error", "<f4"), ("alignments3D/error_min", "<f4"),
           ("alignments3D/resid_pow", "<f4"), ("alignments3D/slice_pow", "<f4"),
           ("alignments3D/image_pow", "<f4"), ("alignments3D/cross_cor", "<f4"),
           ("alignments3D/alpha", "<f4"), ("alignments3D/weight", "<f4"),
           ("alignments3D/pose_ess", "<f4"), ("alignments3D/shift_ess", "<f4"),
           ("alignments3D/class_posterior", "<f4"), ("alignments3D/class", "<u4"),
           ("alignments3D/class_ess", "<f4")]
BLOB = [(n, t.format(w=89), *rest) for n, t, *rest in BLOB_DTYPE]  # an S89 path, as in real files
QUERY = "alignments3D/class in [0, 2]"
QUERY_DICT = {"alignments3D/class": [0, 2]}


def particles(uids: np.ndarray, rng: np.random.Generator, per_stack: int = 500) -> np.ndarray:
    n = len(uids)
    a = np.zeros(n, dtype=[("uid", "<u8")] + BLOB + CTF_DTYPE + ALIGN3D)
    a["uid"] = uids
    stack = np.arange(n) // per_stack
    names = np.array([f"J19/extract/{k:021d}_FoilHole_{k:08d}_Data_particles.mrc" for k in
                      range(int(stack.max()) + 1 if n else 0)], dtype="S89")
    a["blob/path"] = names[stack]
    a["blob/idx"] = np.arange(n) % per_stack
    a["blob/shape"] = 256
    a["blob/psize_A"] = 1.07
    a["blob/sign"] = -1
    a["ctf/type"] = b"patchctf"
    a["ctf/accel_kv"], a["ctf/cs_mm"], a["ctf/amp_contrast"] = 300, 2.7, 0.1
    a["ctf/df1_A"] = rng.uniform(8000, 30000, n)
    a["ctf/df2_A"] = a["ctf/df1_A"] - 200
    a["alignments3D/pose"] = rng.normal(size=(n, 3))
    a["alignments3D/shift"] = rng.normal(size=(n, 2))
    a["alignments3D/class"] = rng.integers(0, 4, n)
    a["alignments3D/split"] = rng.integers(0, 2, n)
    a["alignments3D/error"] = rng.uniform(0, 1, n)
    return a


def passthrough(uids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(uids)
    descr = [("uid", "<u8")] + [(f, t.format(m=80), *r) for f, t, *r in LOCATION_DTYPE] + PICK_DTYPE
    p = np.zeros(n, dtype=descr)
    p["uid"] = uids
    p["location/micrograph_uid"] = np.arange(n) // 500
    p["location/center_x_frac"] = rng.uniform(0, 1, n)
    p["location/center_y_frac"] = rng.uniform(0, 1, n)
    p["pick_stats/ncc_score"] = rng.uniform(0, 1, n)
    return p[rng.permutation(n)]


def save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr)


def wall(cmd: list[str], repeat: int) -> float:
    return best_of(command(cmd), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="rounds (each runs every case once)")
    ap.add_argument("--dir", default=None, help="where to generate the data (e.g. /dev/shm: "
                    "a tmpfs keeps it in memory however busy the machine's page cache is)")
    args = ap.parse_args()
    from cryosparc.dataset import Dataset

    n, rep = args.rows, args.repeat
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench-cs-", dir=args.dir))
    try:
        ua = rng.integers(1, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
        ub = np.concatenate([ua[n // 2:], rng.integers(1, 2**64 - 1, n - n // 2, dtype=np.uint64)])
        A, B, P = root / "A.cs", root / "B.cs", root / "P.cs"
        save(A, particles(ua, rng))
        save(B, particles(ub, rng))
        save(P, passthrough(ua, rng))
        print(f"A, B: {n:,} rows × {np.load(A, mmap_mode='r').dtype.itemsize} bytes "
              f"({A.stat().st_size / 1e6:.0f} MB each); P: {P.stat().st_size / 1e6:.0f} MB; "
              f"B shares {n // 2:,} uids with A")

        t, ratio = _paired_rounds(A, B, P, rep)
        c = _time_cryosparc(A, B, P, rep, Dataset)

        exe = stacktools_command()
        out = root / "out.cs"
        w = {
            "python: import numpy; np.load A+B": wall([sys.executable, "-c",
                                                       f"import numpy as np; np.load('{A}'); np.load('{B}')"], rep),
            "stacktools cs union A B -o OUT --force": wall(exe + ["cs", "union", str(A), str(B), "-o", str(out),
                                                                  "--force", "--quiet"], rep),
            "stacktools cs subtract A B -o OUT --force": wall(exe + ["cs", "subtract", str(A), str(B), "-o",
                                                                     str(out), "--force", "--quiet"], rep),
            "python: import numpy; np.load A": wall([sys.executable, "-c", f"import numpy as np; np.load('{A}')"],
                                                    rep),
            "stacktools cs info A --json": wall(exe + ["cs", "info", str(A), "--json"], rep),
        }

        ct = {"read_cs A": "load A"}
        results = Results("bench_cs", {"rows": n, "repeat": rep, "pairing": "median of per-round ratios"})
        for name in ("np.load A", "np.load A+B", "np.load A+P"):
            results.add(name, t[name], name, t[name])
        print(f"\nload: {os.getloadavg()[0]:.2f} (1-minute average, at the end of the rounds)")
        print("\n| operation (1M rows) | stacktools (median) | np.load of the inputs (median) | ratio¹ "
              "| cryosparc-tools (best) | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, secs in t.items():
            if name.startswith("np.load"):
                continue
            ref = baseline(name)
            cname = ct.get(name, name)
            cs_t = c.get(cname)
            cs_cell = f"{cs_t * 1000:.0f} ms | {secs / cs_t:.2f}×" if cs_t else "— | —"
            print(f"| {name} | {secs * 1000:.0f} ms | {ref}: {t[ref] * 1000:.0f} ms | "
                  f"{ratio[name]:.2f}× | {cs_cell} |")
            results.add(name, secs, ref, t[ref], ratio=ratio[name], cryosparc_tools_seconds=cs_t)
            if cs_t:
                results.add(f"cryosparc-tools: {cname}", cs_t, ref, t[ref])
        print("\n¹ median over rounds of (operation / np.load of its inputs in the same round)")
        print("\n| command, end to end (process start-up, read, op, write) | wall |")
        print("| --- | --- |")
        for name, secs in w.items():
            print(f"| `{name}` | {secs * 1000:.0f} ms |")
            results.add(name, secs, params={"end_to_end": True})
        results.report()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def baseline(name: str) -> str:
    """The np.load row an operation is compared with: what it reads."""
    if name.startswith("join"):
        return "np.load A+P"
    if name.split()[0] in ("union", "intersect", "subtract"):
        return "np.load A+B"
    return "np.load A"


def _paired_rounds(A: Path, B: Path, P: Path, rep: int) -> tuple[dict[str, float], dict[str, float]]:
    """Every stacktools case and every np.load baseline, once per round, ``rep`` rounds.

    Returns the median time of each case and the median over rounds of its ratio to
    its baseline in the same round, which cancels the drift of a shared machine.
    The loaded inputs are locals, freed before the end-to-end commands run.
    """
    a, b, p = np.load(A), np.load(B), np.load(P)
    cases = {
        "np.load A": lambda: np.load(A),
        "np.load A+B": lambda: (np.load(A), np.load(B)),
        "np.load A+P": lambda: (np.load(A), np.load(P)),
        "read_cs A": lambda: read_cs(A),
        "info": lambda: cs_info(A),
        "info --no-stats": lambda: cs_info(A, stats=False),
    }
    for op in ("union", "intersect", "subtract"):
        fn = getattr(ds, op)
        cases[f"{op} in memory"] = lambda fn=fn: fn(a, b)
        cases[f"{op} read + op"] = lambda op=op: getattr(CsDataset.load(A, mmap=True), op)(_uids_or_all(B, op))
    cases["join in memory"] = lambda: ds.join(a, p)
    cases["join read + op"] = lambda: CsDataset.load(A, passthrough=P)
    cases["query in memory"] = lambda: CsDataset(a).query(QUERY)
    cases["query read + op"] = lambda: CsDataset.load(A, mmap=True).query(QUERY)
    cases["dedupe in memory"] = lambda: CsDataset(a).dedupe()
    cases["split --into 4 in memory"] = lambda: CsDataset(a).split_random(4)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rep):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(x / y for x, y in zip(v, times[baseline(k)]))
             for k, v in times.items() if not k.startswith("np.load")}
    return med, ratio


def _time_cryosparc(A: Path, B: Path, P: Path, rep: int, Dataset: type) -> dict[str, float]:
    """cryosparc-tools' timings (best of ``rep``), each checked to give stacktools' answer."""
    a, b, p = np.load(A), np.load(B), np.load(P)
    c = {}
    c["load A"] = best_of(lambda: Dataset.load(A), rep)
    da, db, dp = Dataset.load(A), Dataset.load(B), Dataset.load(P)
    c["union in memory"] = best_of(lambda: da.union(db), rep)
    c["union read + op"] = best_of(lambda: Dataset.load(A).union(Dataset.load(B)), rep)
    c["join in memory"] = best_of(lambda: da.innerjoin(dp), rep)
    c["join read + op"] = best_of(lambda: Dataset.load(A).innerjoin(Dataset.load(P)), rep)
    c["query in memory"] = best_of(lambda: da.query(QUERY_DICT), rep)
    c["query read + op"] = best_of(lambda: Dataset.load(A).query(QUERY_DICT), rep)
    # Same answers, or the comparison means nothing.
    assert len(da.union(db)) == len(ds.union(a, b))
    assert len(da.innerjoin(dp)) == len(ds.join(a, p))
    assert len(da.query(QUERY_DICT)) == len(CsDataset(a).query(QUERY))
    return c


def _uids_or_all(path: Path, op: str) -> CsDataset:
    """What the CLI reads of B: everything for union, only the uid column otherwise."""
    if op == "union":
        return CsDataset.load(path, mmap=True)
    return CsDataset.load(path, fields=["uid"])


if __name__ == "__main__":
    main()
