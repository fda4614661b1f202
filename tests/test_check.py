"""stacktools check: exactly the injected bad stacks and particles, and nothing else."""

from __future__ import annotations

import json
import os

import numpy as np

from stacktools.api import check_particles
from tests.helpers import assert_one_line_error, run_cli
from tests.independent import blob_file, header, read_cs


def poke(path, index, values):
    h = header(path)
    pb = h["nx"] * h["ny"] * h["dtype"].itemsize
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, np.broadcast_to(np.asarray(values, h["dtype"]), (h["ny"], h["nx"])).tobytes(),
                  h["offset"] + index * pb)
    finally:
        os.close(fd)


def test_clean_set_exits_0(demo):
    res = run_cli("check", demo.selected_cs, "--project-dir", demo.project_dir, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bad_particles"] == 0 and out["particles"] == demo.selected


def test_finds_exactly_the_injected_particles(demo, tmp_path):
    data = read_cs(demo.selected_cs)
    paths = [blob_file(demo.project_dir, p) for p in data["blob/path"]]
    stacks = list(dict.fromkeys(paths))
    rows_of = {s: [r for r, p in enumerate(paths) if p == s] for s in stacks}
    a, b, c = stacks[0], stacks[1], stacks[2]
    nan_row, inf_row, zero_row = rows_of[a][0], rows_of[b][0], rows_of[a][-1]
    img = np.zeros((header(a)["ny"], header(a)["nx"]))
    img[3, 4] = np.nan
    poke(a, int(data["blob/idx"][nan_row]), img)
    img = np.zeros((header(b)["ny"], header(b)["nx"]))
    img[1, 1] = -np.inf
    poke(b, int(data["blob/idx"][inf_row]), img)
    poke(a, int(data["blob/idx"][zero_row]), 0.0)
    os.truncate(c, os.path.getsize(c) - 10)
    want = {(nan_row, "nonfinite"), (inf_row, "nonfinite"), (zero_row, "zeros")}
    want |= {(r, "stack") for r in rows_of[c]}
    clean = tmp_path / "clean.cs"
    res = check_particles(demo.selected_cs, project_dir=demo.project_dir, write_clean=clean)
    assert {(p.row, p.reason) for p in res.problems} == want
    assert str(c) in res.stack_problems and "truncated" in res.stack_problems[str(c)]
    kept = read_cs(clean)
    bad = {r for r, _ in want}
    assert kept["uid"].tolist() == [u for r, u in enumerate(data["uid"].tolist()) if r not in bad]
    cli = run_cli("check", demo.selected_cs, "--project-dir", demo.project_dir, "--json")
    assert cli.returncode == 1
    assert json.loads(cli.stdout)["bad_particles"] == len(bad)


def test_outliers_flag_only_the_far_particle(demo):
    data = read_cs(demo.selected_cs)
    path = blob_file(demo.project_dir, data["blob/path"][0])
    h = header(path)
    rng = np.random.default_rng(0)
    poke(path, int(data["blob/idx"][0]), rng.normal(0, 1000, (h["ny"], h["nx"])))
    res = check_particles(demo.selected_cs, project_dir=demo.project_dir, outliers=6)
    assert {(p.row, p.reason) for p in res.problems} == {(0, "outlier")}
    assert check_particles(demo.selected_cs, project_dir=demo.project_dir).clean


def test_write_clean_onto_the_input_is_refused(demo):
    before = demo.selected_cs.read_bytes()
    res = run_cli("check", demo.selected_cs, "--project-dir", demo.project_dir,
                  "--write-clean", demo.selected_cs)
    assert res.returncode == 2
    assert_one_line_error(res)
    assert demo.selected_cs.read_bytes() == before
