""".cs operations at 1,000,000 rows: stacktools against np.load and cryosparc-tools.

Run: python -m benchmarks.bench_cs [--rows 1000000] [--repeat 5]

Data (generated in a temporary directory, deleted afterwards): A, a refinement-like
particles file (uid, blob/*, ctf/*, alignments3D/*; 1M rows); B, a file of the same
dtype sharing half of A's uids; P, a passthrough (location/*, pick_stats/*) for
every uid of A, shuffled. Warm page cache, best of --repeat runs.

"np.load" is the time to load what an operation reads (A, or A and B); the
stacktools rows "read + op" include reading their inputs, as the CLI does (before
writing). cryosparc-tools rows use cryosparc.dataset.Dataset on the same files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from cryosparc.dataset import Dataset

    n, rep = args.rows, args.repeat
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench-cs-"))
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

        t = {}
        t["np.load A"] = best_of(lambda: np.load(A), rep)
        t["np.load A+B"] = best_of(lambda: (np.load(A), np.load(B)), rep)
        t["np.load A+P"] = best_of(lambda: (np.load(A), np.load(P)), rep)
        t["read_cs A"] = best_of(lambda: read_cs(A), rep)
        t["info"] = best_of(lambda: cs_info(A), rep)
        t["info --no-stats"] = best_of(lambda: cs_info(A, stats=False), rep)

        ops, c = _time_operations(A, B, P, rep, Dataset)
        t.update(ops)

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

        base = {"read_cs A": "np.load A", "info": "np.load A", "info --no-stats": "np.load A",
                "join in memory": "np.load A+P", "join read + op": "np.load A+P"}
        ct = {"read_cs A": "load A"}
        results = Results("bench_cs", {"rows": n, "repeat": rep})
        for name in ("np.load A", "np.load A+B", "np.load A+P"):
            results.add(name, t[name], name, t[name])
        print("\n| operation (1M rows) | stacktools | np.load of the inputs | ratio | cryosparc-tools | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, secs in t.items():
            if name.startswith("np.load"):
                continue
            ref = base.get(name, "np.load A+B" if name.split()[0] in ("union", "intersect", "subtract")
                           else "np.load A")
            cname = ct.get(name, name)
            cs_t = c.get(cname)
            cs_cell = f"{cs_t * 1000:.0f} ms | {secs / cs_t:.2f}×" if cs_t else "— | —"
            print(f"| {name} | {secs * 1000:.0f} ms | {ref}: {t[ref] * 1000:.0f} ms | "
                  f"{secs / t[ref]:.2f}× | {cs_cell} |")
            results.add(name, secs, ref, t[ref], cryosparc_tools_seconds=cs_t)
            if cs_t:
                results.add(f"cryosparc-tools: {cname}", cs_t, ref, t[ref])
        print("\n| command, end to end (process start-up, read, op, write) | wall |")
        print("| --- | --- |")
        for name, secs in w.items():
            print(f"| `{name}` | {secs * 1000:.0f} ms |")
            results.add(name, secs, params={"end_to_end": True})
        results.report()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _time_operations(A: Path, B: Path, P: Path, rep: int, Dataset: type
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """stacktools (first) and cryosparc-tools (second) operation timings. The loaded
    inputs are locals, so they are freed before the end-to-end commands run."""
    t = {}
    a, b, p = np.load(A), np.load(B), np.load(P)
    for op in ("union", "intersect", "subtract"):
        fn = getattr(ds, op)
        t[f"{op} in memory"] = best_of(lambda fn=fn: fn(a, b), rep)
        t[f"{op} read + op"] = best_of(lambda op=op: getattr(CsDataset.load(A, mmap=True), op)(
            _uids_or_all(B, op)), rep)
    t["join in memory"] = best_of(lambda: ds.join(a, p), rep)
    t["join read + op"] = best_of(lambda: CsDataset.load(A, passthrough=P), rep)
    t["query in memory"] = best_of(lambda: CsDataset(a).query(QUERY), rep)
    t["query read + op"] = best_of(lambda: CsDataset.load(A, mmap=True).query(QUERY), rep)

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
    return t, c


def _uids_or_all(path: Path, op: str) -> CsDataset:
    """What the CLI reads of B: everything for union, only the uid column otherwise."""
    if op == "union":
        return CsDataset.load(path, mmap=True)
    return CsDataset.load(path, fields=["uid"])


if __name__ == "__main__":
    main()
