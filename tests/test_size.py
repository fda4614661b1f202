"""Size arithmetic: the guide's formula and the exact figures from the stacks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacktools.demo import make_demo_project
from stacktools.errors import FieldError
from stacktools.formats.cs import read_cs, write_cs
from stacktools.particles import ParticleSet
from stacktools.size import formula_bytes, size_particles
from tests.helpers import assert_one_line_error, cli_json


def test_guide_worked_examples() -> None:
    assert formula_bytes(256, 1_000_000) == 263_296_000_000
    assert formula_bytes(432, 2_000_000) == 1_495_296_000_000


@given(box=st.integers(1, 2048), n=st.integers(0, 10**8), ns=st.integers(0, 4096),
       hl=st.integers(0, 4096))
def test_formula_is_linear(box, n, ns, hl) -> None:
    assert formula_bytes(box, n, ns, hl) == n * formula_bytes(box, 1, ns, hl)
    assert formula_bytes(box, n, ns, hl) - formula_bytes(box, n, 0, 0) == n * (ns + hl)


def test_formula_rejects_negative() -> None:
    with pytest.raises(ValueError):
        formula_bytes(-1, 3)


def test_cli_formula_json(run_cli) -> None:
    res = run_cli("size", "--box", 256, "--count", 1_000_000, "--json", check=True)
    assert json.loads(res.stdout)["formula_bytes"] == 263_296_000_000
    res = run_cli("size", "--box", 432, "--count", 2_000_000, "--json", check=True)
    assert json.loads(res.stdout)["formula_bytes"] == 1_495_296_000_000
    res = run_cli("size", "--box", 256, "--count", 1_000_000, check=True)
    assert "263.3 GB" in res.stdout and "263,296,000,000 bytes" in res.stdout
    res = run_cli("size", "--box", 432, "--count", 2_000_000, check=True)
    assert "1.5 TB" in res.stdout


def _expected(ps: ParticleSet) -> dict:
    """Independent computation from file sizes and mrcfile-free header arithmetic."""
    cache = consolidated = 0
    for path in ps.stack_paths:
        cache += os.path.getsize(path)
    for g in ps.groups():
        raw = g.path.read_bytes()[:1024]
        nx, ny, nz, mode = np.frombuffer(raw[:16], "<i4")
        item = {2: 4, 12: 2}[int(mode)]
        consolidated += 1024 + len(g.rows) * int(nx) * int(ny) * item
    return {"cache_bytes": cache, "consolidated_bytes": consolidated}


def test_dataset_figures(demo) -> None:
    ps = ParticleSet.open(demo.selected_cs, demo.project_dir)
    r = size_particles(ps)
    assert r.particles == demo.selected
    assert r.stacks == len(demo.stacks)
    assert r.box == 64
    assert r.formula_bytes == formula_bytes(64, demo.selected)
    exp = _expected(ps)
    assert r.cache_bytes == exp["cache_bytes"]
    assert r.consolidated_bytes == exp["consolidated_bytes"]
    assert set(r.modes) == {"float32", "float16"} and sum(r.modes.values()) == demo.selected
    assert r.extended_header_bytes > 0
    assert r.stack_particles == demo.particles
    assert 0 < r.saved_fraction < 1


def test_size_reads_headers_only(demo, monkeypatch) -> None:
    ps = ParticleSet.open(demo.selected_cs, demo.project_dir)
    reads = []
    real_pread = os.pread

    def pread(fd, n, off):
        reads.append((n, off))
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    size_particles(ps)
    assert reads and all(n == 1024 and off == 0 for n, off in reads)
    assert len(reads) == len(demo.stacks)


def test_cli_dataset_json(demo, run_cli) -> None:
    res = run_cli("size", demo.selected_cs, "--project-dir", demo.project_dir, "--json", check=True)
    d = json.loads(res.stdout)
    for key in ("particles", "stacks", "box", "formula_bytes", "cache_bytes", "consolidated_bytes"):
        assert isinstance(d[key], int), key
    ps = ParticleSet.open(demo.selected_cs, demo.project_dir)
    assert d["particles"] == demo.selected
    assert {k: d[k] for k in ("cache_bytes", "consolidated_bytes")} == _expected(ps)


def test_cli_dataset_table(demo, run_cli) -> None:
    res = run_cli("size", demo.selected_cs, "--project-dir", demo.project_dir, "--per-stack", check=True)
    assert "float16" in res.stdout and "bytes)" in res.stdout


def test_empty_dataset(real_data: Path, tmp_path: Path) -> None:
    a = read_cs(real_data / "cryosparc" / "4k_dataset.cs")
    with pytest.raises(FieldError, match="missing field blob/path"):
        ParticleSet(a, tmp_path)  # no blob fields
    p = np.zeros(0, dtype=[("uid", "<u8"), ("blob/path", "S10"), ("blob/idx", "<u4"),
                          ("blob/shape", "<u4", (2,))])
    r = size_particles(ParticleSet(p, tmp_path))
    assert (r.particles, r.stacks, r.cache_bytes, r.consolidated_bytes, r.formula_bytes) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("case", ["corrupt", "truncated_cs", "missing_stack", "idx_past_end",
                                  "wrong_box", "truncated_stack", "missing_field"])
def test_cli_bad_input_one_line(demo, run_cli, case: str) -> None:
    cs = demo.selected_cs
    expect = [cs.name]
    if case == "corrupt":
        cs.write_bytes(b"garbage" * 10)
    elif case == "truncated_cs":
        cs.write_bytes(cs.read_bytes()[:-100])
    elif case == "missing_stack":
        victim = ParticleSet.open(cs, demo.project_dir).stack_paths[0]
        victim.unlink()
        expect = [victim.name, "not found", cs.name, "row "]
    elif case == "idx_past_end":
        a = read_cs(cs).copy()
        a["blob/idx"][3] = 99_999
        write_cs(cs, a)
        expect = [cs.name, "row 3", "past the end"]
    elif case == "wrong_box":
        a = read_cs(cs).copy()
        a["blob/shape"][:] = (128, 128)
        write_cs(cs, a)
        expect = [cs.name, "row 0", "box"]
    elif case == "truncated_stack":
        victim = ParticleSet.open(cs, demo.project_dir).stack_paths[1]
        with open(victim, "r+b") as fh:
            fh.truncate(2000)
        expect = [victim.name, "truncated"]
    elif case == "missing_field":
        write_cs(cs, _drop(read_cs(cs), "blob/idx"))
        expect = [cs.name, "blob/idx"]
    res = run_cli("size", cs, "--project-dir", demo.project_dir, "--json")
    assert res.returncode == 2
    assert res.stdout == ""
    assert_one_line_error(res, *expect)


def _drop(a: np.ndarray, field: str) -> np.ndarray:
    names = [n for n in a.dtype.names if n != field]
    out = np.empty(len(a), dtype=[(n, a.dtype[n]) for n in names])
    for n in names:
        out[n] = a[n]
    return out


def test_debug_shows_traceback(tmp_path: Path, run_cli) -> None:
    bad = tmp_path / "bad.cs"
    bad.write_bytes(b"nope")
    res = run_cli("--debug", "size", bad)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_sparse_scale_project_sizes_without_pixels(tmp_path: Path) -> None:
    proj = make_demo_project(tmp_path / "P", micrographs=30, particles_per_micrograph=(100, 100),
                             box=256, sparse=True, select_fraction=0.1)
    r = size_particles(ParticleSet.open(proj.selected_cs, proj.project_dir))
    assert r.particles == 300 and r.stack_particles == 3000
    assert r.cache_bytes == sum(s.stat().st_size for s in proj.stacks)


def test_size_shows_what_float16_and_fourier_crops_would_take(demo):
    """Each shrink row's bytes, from an independent reading of the headers."""
    from tests import independent

    doc = cli_json("size", demo.selected_cs)
    data = independent.read_cs(demo.selected_cs)
    per_stack: dict = {}
    for path, _ in zip(data["blob/path"], data["blob/idx"]):
        f = independent.blob_file(demo.project_dir, path)
        per_stack[f] = per_stack.get(f, 0) + 1
    itemsize = {f: independent.header(f)["dtype"].itemsize for f in per_stack}
    box = doc["box"]
    rows = {(r["box"], r["dtype"]): r["bytes"] for r in doc["shrink"]}
    head = 1024 * len(per_stack)
    assert rows[(box, "float16")] == head + sum(n * box * box * 2 for n in per_stack.values())
    crops = sorted({b for b, _ in rows if b != box}, reverse=True)
    assert crops and all(b < box and b % 2 == 0 for b in crops)
    for b in crops:
        assert rows[(b, "keep")] == head + sum(n * b * b * itemsize[f] for f, n in per_stack.items())
        assert rows[(b, "float16")] == head + sum(n * b * b * 2 for n in per_stack.values())
    # Consolidated at full size in the stacks' own modes is the report's own figure.
    assert doc["consolidated_bytes"] == head + sum(n * box * box * itemsize[f] for f, n in per_stack.items())
