"""A small CryoSPARC-shaped project, for the demo, the tests and the benchmarks.

The project looks like what CryoSPARC leaves on disk after Extract and Select 2D::

    PROJECT/
      J5/extract/<uid>_<micrograph>_patch_aligned_doseweighted_particles.mrc
      J5/extracted_particles.cs
      J7/J7_particles_selected.cs               # shuffled subset, blob/* + alignments2D/*
      J7/J7_passthrough_particles_selected.cs   # ctf/*, location/*, pick_stats/*

Stacks are one per micrograph. Some are float16 (mode 12) and one carries an
extended header, as real data does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stacktools.formats.atomic import atomic_output
from stacktools.formats.cs import write_cs
from stacktools.formats.mrc import make_header

EXTRACT_JOB = "J5"
SELECT_JOB = "J7"

BLOB_DTYPE = [("blob/path", "S{w}"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
              ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("blob/import_sig", "<u8")]
CTF_DTYPE = [("ctf/type", "S9"), ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"),
             ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
             ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
             ("ctf/scale", "<f4"), ("ctf/scale_const", "<f4"), ("ctf/shift_A", "<f4", (2,)),
             ("ctf/tilt_A", "<f4", (2,)), ("ctf/trefoil_A", "<f4", (2,)),
             ("ctf/tetra_A", "<f4", (4,)), ("ctf/anisomag", "<f4", (4,)), ("ctf/bfactor", "<f4")]
LOCATION_DTYPE = [("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"),
                  ("location/micrograph_path", "S{m}"), ("location/micrograph_shape", "<u4", (2,)),
                  ("location/micrograph_psize_A", "<f4"), ("location/center_x_frac", "<f4"),
                  ("location/center_y_frac", "<f4")]
PICK_DTYPE = [("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"),
              ("pick_stats/template_idx", "<u4"), ("pick_stats/angle_rad", "<f4")]
ALIGN2D_DTYPE = [("alignments2D/split", "<u4"), ("alignments2D/shift", "<f4", (2,)),
                 ("alignments2D/pose", "<f4"), ("alignments2D/psize_A", "<f4"),
                 ("alignments2D/error", "<f4"), ("alignments2D/error_min", "<f4"),
                 ("alignments2D/resid_pow", "<f4"), ("alignments2D/slice_pow", "<f4"),
                 ("alignments2D/image_pow", "<f4"), ("alignments2D/cross_cor", "<f4"),
                 ("alignments2D/alpha", "<f4"), ("alignments2D/alpha_min", "<f4"),
                 ("alignments2D/weight", "<f4"), ("alignments2D/pose_ess", "<f4"),
                 ("alignments2D/shift_ess", "<f4"), ("alignments2D/class_posterior", "<f4"),
                 ("alignments2D/class", "<u4"), ("alignments2D/class_ess", "<f4")]


@dataclass
class DemoProject:
    """Paths of a generated project."""

    project_dir: Path
    extracted_cs: Path
    selected_cs: Path
    passthrough_cs: Path
    stacks: list[Path] = field(default_factory=list)
    particles: int = 0
    selected: int = 0


def _fmt(descr, **widths):
    return [(n, t.format(**widths), *rest) for n, t, *rest in descr]


def _micrograph_name(rng: np.random.Generator, k: int) -> str:
    hole = 10_000_000 + int(rng.integers(0, 9_999_999))
    return (f"FoilHole_{hole}_Data_{hole + 7 + k}_{k % 10}_20231004_{101112 + k:06d}"
            "_fractions_patch_aligned_doseweighted")


def make_demo_project(root: str | os.PathLike, *, micrographs: int = 12,
                      particles_per_micrograph: tuple[int, int] = (20, 60),
                      box: int = 64, psize_A: float = 1.07, float16_every: int = 4,
                      extended_header_stack: int | None = 1, select_fraction: float = 0.3,
                      seed: int = 0, sparse: bool = False) -> DemoProject:
    """Write a CryoSPARC-shaped project under ``root`` and return its paths.

    Parameters
    ----------
    root
        The project directory to create (may exist).
    micrographs
        Number of extract stacks, one per micrograph.
    particles_per_micrograph
        Inclusive range of particles per stack; a single value gives that many.
    box
        Box size in pixels.
    psize_A
        Pixel size in Å.
    float16_every
        Every n-th stack is float16 (mode 12); 0 writes only float32.
    extended_header_stack
        Index of the stack that carries an extended header, or ``None``.
    select_fraction
        Fraction of particles in the Select 2D subset.
    seed
        Random seed: the same arguments give byte-identical projects.
    sparse
        Write headers only and extend stacks as sparse files (for sizing at scale).
    """
    rng = np.random.default_rng(seed)
    proj = Path(root)
    extract_dir = proj / EXTRACT_JOB / "extract"
    extract_dir.mkdir(parents=True, exist_ok=True)
    (proj / SELECT_JOB).mkdir(parents=True, exist_ok=True)
    lo, hi = (particles_per_micrograph if isinstance(particles_per_micrograph, tuple)
              else (particles_per_micrograph, particles_per_micrograph))
    counts = rng.integers(lo, hi + 1, size=micrographs)
    total = int(counts.sum())

    blob_paths, mic_paths, stacks = [], [], []
    for k in range(micrographs):
        mic = _micrograph_name(rng, k)
        uid = int(rng.integers(10**17, 10**18))
        name = f"{uid:021d}_{mic}_particles.mrc"
        blob_paths.append(f"{EXTRACT_JOB}/extract/{name}")
        mic_paths.append(f"J3/motioncorrected/{uid:021d}_{mic}.mrc")
        mode = 12 if float16_every and k % float16_every == float16_every - 1 else 2
        n = int(counts[k])
        ext = 128 * n if extended_header_stack == k else 0
        path = extract_dir / name
        _write_stack(path, rng, n, box, mode, psize_A, ext, sparse)
        stacks.append(path)

    full = _extracted_rows(rng, counts, blob_paths, mic_paths, box, psize_A)
    extracted_cs = proj / EXTRACT_JOB / "extracted_particles.cs"
    write_cs(extracted_cs, full)

    nsel = int(round(total * select_fraction))
    pick = rng.permutation(total)[:nsel]
    sel_main, sel_pass = _select2d_rows(rng, full, pick)
    selected_cs = proj / SELECT_JOB / f"{SELECT_JOB}_particles_selected.cs"
    passthrough_cs = proj / SELECT_JOB / f"{SELECT_JOB}_passthrough_particles_selected.cs"
    write_cs(selected_cs, sel_main)
    write_cs(passthrough_cs, sel_pass)
    return DemoProject(proj, extracted_cs, selected_cs, passthrough_cs, stacks, total, nsel)


def _write_stack(path: Path, rng: np.random.Generator, n: int, box: int, mode: int,
                 psize_A: float, ext: int, sparse: bool) -> None:
    header = make_header(box, box, n, mode, psize_A, nsymbt=ext,
                         exttyp=b"MRCO" if ext else b"",
                         label="stacktools demo: extracted particles")
    dtype = np.float16 if mode == 12 else np.float32
    with atomic_output(path, fsync=False) as fh:
        fh.write(header)
        if ext:
            fh.write(rng.integers(0, 256, ext, dtype=np.uint8).tobytes())
        if sparse:
            fh.truncate(len(header) + ext + n * box * box * np.dtype(dtype).itemsize)
            return
        for start in range(0, n, 64):
            m = min(64, n - start)
            px = rng.standard_normal((m, box, box), dtype=np.float32)
            px += np.arange(start, start + m, dtype=np.float32)[:, None, None]
            fh.write(px.astype(dtype).tobytes())


def _extracted_rows(rng, counts, blob_paths, mic_paths, box, psize_A) -> np.ndarray:
    total = int(counts.sum())
    w = max(len(p) for p in blob_paths)
    m = max(len(p) for p in mic_paths)
    descr = ([("uid", "<u8")] + _fmt(BLOB_DTYPE, w=w) + CTF_DTYPE
             + _fmt(LOCATION_DTYPE, m=m) + PICK_DTYPE)
    a = np.zeros(total, dtype=descr)
    a["uid"] = rng.integers(1, 2**63, size=total, dtype=np.uint64) * 2 - 1
    mic = np.repeat(np.arange(len(counts)), counts)
    a["blob/path"] = np.array(blob_paths, dtype=f"S{w}")[mic]
    a["blob/idx"] = np.concatenate([np.arange(c) for c in counts]) if total else []
    a["blob/shape"] = box
    a["blob/psize_A"] = psize_A
    a["blob/sign"] = -1.0
    a["ctf/type"] = b"patchctf"
    a["ctf/accel_kv"] = 300.0
    a["ctf/cs_mm"] = 2.7
    a["ctf/amp_contrast"] = 0.1
    df = rng.uniform(8000, 30000, len(counts))[mic]
    a["ctf/df1_A"] = df + rng.normal(0, 150, total)
    a["ctf/df2_A"] = df - 200 + rng.normal(0, 150, total)
    a["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, len(counts))[mic]
    a["ctf/scale"] = 1.0
    a["ctf/anisomag"] = (1.0, 0.0, 0.0, 1.0)
    mic_uids = rng.integers(1, 2**63, size=len(counts), dtype=np.uint64)
    a["location/micrograph_uid"] = mic_uids[mic]
    a["location/micrograph_path"] = np.array(mic_paths, dtype=f"S{m}")[mic]
    a["location/micrograph_shape"] = (4092, 5760)
    a["location/micrograph_psize_A"] = psize_A
    a["location/center_x_frac"] = rng.uniform(0.02, 0.98, total)
    a["location/center_y_frac"] = rng.uniform(0.02, 0.98, total)
    a["pick_stats/ncc_score"] = rng.uniform(0.2, 0.6, total)
    a["pick_stats/power"] = rng.uniform(200, 800, total)
    a["pick_stats/template_idx"] = rng.integers(0, 3, total)
    a["pick_stats/angle_rad"] = rng.uniform(0, 2 * np.pi, total)
    return a


def _select2d_rows(rng, full: np.ndarray, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names = full.dtype.names
    blob = [n for n in names if n.startswith("blob/")]
    main_descr = [("uid", "<u8")] + [(n, full.dtype.fields[n][0]) for n in blob] + ALIGN2D_DTYPE
    main = np.zeros(len(pick), dtype=main_descr)
    for n in ["uid"] + blob:
        main[n] = full[n][pick]
    k = len(pick)
    main["alignments2D/split"] = rng.integers(0, 2, k)
    main["alignments2D/shift"] = rng.normal(0, 2, (k, 2))
    main["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, k)
    main["alignments2D/psize_A"] = full["blob/psize_A"][pick]
    main["alignments2D/error"] = rng.uniform(1e3, 2e3, k)
    main["alignments2D/cross_cor"] = rng.uniform(50, 300, k)
    main["alignments2D/alpha"] = 1.0
    main["alignments2D/weight"] = 1.0
    main["alignments2D/class_posterior"] = rng.uniform(0.5, 1, k)
    main["alignments2D/class"] = rng.integers(0, 50, k)
    main["alignments2D/class_ess"] = 1.0
    rest = [n for n in names if n not in blob and n != "uid"]
    pdescr = [("uid", "<u8")] + [(n, full.dtype.fields[n][0]) for n in rest]
    passthrough = np.zeros(len(pick), dtype=pdescr)
    for n in ["uid"] + rest:
        passthrough[n] = full[n][pick]
    return main, passthrough


DEMO_MARKER = ".stacktools-demo"


def run_demo(root: str | os.PathLike, *, quiet: bool = True) -> dict:
    """Create the demo project under ``root`` and run the main flow on its subset.

    Returns a summary: ``project_dir`` and a list of ``steps``, each with a
    ``name``, a ``title``, a ``show`` mapping for display and the step's full
    ``result``. ``root`` must be empty, new, or an earlier demo project.
    """
    from stacktools.errors import OutputError
    from stacktools.particles import ParticleSet
    from stacktools.size import size_particles

    proj = Path(root).resolve()
    if proj.exists() and any(proj.iterdir()) and not (proj / DEMO_MARKER).exists():
        raise OutputError(f"{proj}: exists and is not a stacktools demo project; "
                          "choose an empty or new directory")
    proj.mkdir(parents=True, exist_ok=True)
    (proj / DEMO_MARKER).write_text("created by stacktools demo\n")
    made = make_demo_project(proj)
    steps = [{
        "name": "project",
        "title": "1. Project: Extract (J5) → Select 2D (J7)",
        "show": {"extract stacks": len(made.stacks), "particles extracted": made.particles,
                 "particles selected": made.selected,
                 "selected .cs": str(made.selected_cs.relative_to(proj))},
        "result": {"stacks": [str(s) for s in made.stacks], "particles": made.particles,
                   "selected": made.selected},
    }]
    pset = ParticleSet.open(made.selected_cs, proj, made.passthrough_cs)
    report = size_particles(pset)
    steps.append({
        "name": "size",
        "title": "2. Size of the Select 2D subset",
        "show": {"particles": report.particles, "stacks": report.stacks,
                 "formula estimate bytes": report.formula_bytes,
                 "whole stacks (cache today) bytes": report.cache_bytes,
                 "selected only (consolidated) bytes": report.consolidated_bytes,
                 "saved by consolidating": f"{report.saved_fraction:.1%}"},
        "result": report.to_dict(),
    })
    from stacktools.consolidate import consolidate
    # force: a rerun regenerates the sources, so the earlier outputs are replaced.
    cons = consolidate(made.selected_cs, proj / "J8" / "consolidated", project_dir=proj,
                       passthrough=made.passthrough_cs, verify=True, force=True)
    steps.append({
        "name": "consolidate",
        "title": "3. Consolidate: stacks of the selected particles only (J8)",
        "show": {"stacks written": cons.stacks, "particles": cons.particles,
                 "source bytes": cons.source_bytes, "written bytes": cons.bytes_written,
                 "saved bytes": cons.saved_bytes,
                 "new .cs": str(Path(cons.cs).relative_to(proj)),
                 "verified": "every particle bit-exact" if cons.verified else "no"},
        "result": cons.to_dict(),
    })
    from stacktools.cache import Cache
    # The demo's "SSD" is a directory inside the project; reserve 0 so it runs anywhere.
    ssd = proj / "ssd-cache"
    ssd.mkdir(exist_ok=True)
    cache = Cache(ssd, reserve_mb=0, quota_mb=None)
    sub = ParticleSet.open(made.selected_cs, proj)
    plan = cache.plan(sub, consolidation=True, pinned=True)
    planned = plan.to_dict(files=False)
    synced = cache.execute(plan)
    steps.append({
        "name": "cache",
        "title": "4. SSD cache: plan, then sync the subset (ssd-cache/)",
        "show": {"plan: files to copy": plan.files_to_copy, "plan: bytes": plan.bytes_to_copy,
                 "plan: fits": "yes" if plan.fits else "no",
                 "plan: if consolidated first, bytes": plan.consolidated_bytes,
                 "sync: files copied": synced.copied, "sync: copied bytes": synced.bytes_copied,
                 "sync: already cached": synced.reused,
                 "cache": str(cache.root.relative_to(proj))},
        "result": {"plan": planned, "sync": synced.to_dict()},
    })
    return {"project_dir": str(proj.resolve()), "steps": steps}
