"""stacktools consolidate on bad input, full disks and kill -9: nothing partial under a final name."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import stacktools.consolidate.run as consolidate_mod
import stacktools.stacks as stackcopy
from stacktools.consolidate import MANIFEST, consolidate
from stacktools.errors import (
    DiskFullError,
    ModeMismatchError,
    OutputError,
    SourceOverwriteError,
)
from stacktools.formats.cs import read_cs, write_cs
from stacktools.formats.mrc import make_header
from stacktools.particles import ParticleSet
from tests import independent
from tests.helpers import run_cli, tmpfs
from tests.independent import assert_same_particles


def final_files(outdir: Path) -> list[Path]:
    """Files under OUTDIR with a final (non-hidden) name."""
    if not outdir.exists():
        return []
    return [p for p in outdir.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _index_past_end(demo):
    data = read_cs(demo.selected_cs)
    data["blob/idx"][3] = 10_000
    write_cs(demo.selected_cs, data)
    return "past the end"


def _truncated(demo):
    stack = ParticleSet.open(demo.selected_cs, demo.project_dir).stack_paths[0]
    os.truncate(stack, stack.stat().st_size - 100)
    return "truncated"


def _missing(demo):
    ParticleSet.open(demo.selected_cs, demo.project_dir).stack_paths[2].unlink()
    return "not found"


def _mixed_boxes(demo):
    odd = demo.project_dir / "J5" / "extract" / "odd.mrc"
    odd.write_bytes(make_header(32, 32, 10, 2, 1.07) + np.ones((10, 32, 32), "<f4").tobytes())
    data = read_cs(demo.selected_cs)
    data["blob/path"][:5] = b"J5/extract/odd.mrc"
    data["blob/idx"][:5] = np.arange(5)
    data["blob/shape"][:5] = 32
    write_cs(demo.selected_cs, data)
    return "mixed box sizes"


@pytest.mark.parametrize("breaker", [_index_past_end, _truncated, _missing, _mixed_boxes])
def test_bad_input_exit_2_one_line_nothing_written(demo, breaker):
    expect = breaker(demo)
    out = demo.project_dir / "J8"
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacktools: error: ")
    assert expect in lines[0] and ".mrc" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_unwritable_outdir(demo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(blocker / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot create output directory" in proc.stderr
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir",
                       str(demo.project_dir), "--out", str(ro))
        assert proc.returncode == 2 and not final_files(ro)


def test_refuses_source_locations(demo):
    extract = demo.project_dir / "J5" / "extract"
    before = sorted(p.name for p in extract.iterdir())
    with pytest.raises(SourceOverwriteError):
        consolidate(demo.selected_cs, extract, project_dir=demo.project_dir)
    with pytest.raises(SourceOverwriteError):
        consolidate(demo.selected_cs, extract / "sub" / "..", project_dir=demo.project_dir)
    # A symlinked OUTDIR/stacks that leads to the sources is caught too.
    out = demo.project_dir / "J8"
    out.mkdir()
    (out / "stacks").symlink_to(extract)
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(out))
    assert proc.returncode == 2 and "source" in proc.stderr
    assert sorted(p.name for p in extract.iterdir()) == before


def test_refuses_an_output_that_is_an_input(demo):
    out = demo.project_dir / "J8"
    out.mkdir()
    before = demo.selected_cs.read_bytes()
    name = out / f"{demo.selected_cs.stem}_consolidated.cs"
    # The input's directory is refused as OUTDIR outright.
    with pytest.raises(SourceOverwriteError, match="holds source stacks"):
        consolidate(demo.selected_cs, demo.selected_cs.parent, project_dir=demo.project_dir)
    # The input under the new .cs's name, as a link or another name of the same file.
    for link in (os.symlink, os.link):
        link(demo.selected_cs, name)
        with pytest.raises(SourceOverwriteError, match="is the same file as a source"):
            consolidate(demo.selected_cs, out, project_dir=demo.project_dir, force=True)
        proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir",
                       str(demo.project_dir), "--out", str(out), "--force")
        assert proc.returncode == 2 and proc.stderr == (
            f"stacktools: error: {name}: is the same file as a source; refusing to overwrite it\n")
        assert demo.selected_cs.read_bytes() == before and os.listdir(out) == [name.name]
        name.unlink()


def test_mixed_modes_packed_is_exit_2(demo):
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(demo.project_dir / "J8"), "--layout", "packed")
    assert proc.returncode == 2 and "--dtype float32" in proc.stderr
    with pytest.raises(ModeMismatchError, match="use dtype='float32' or the per-stack layout"):
        consolidate(demo.selected_cs, demo.project_dir / "J8", project_dir=demo.project_dir,
                    layout="packed")


def test_injected_disk_full_removes_everything(demo, monkeypatch):
    calls = {"n": 0, "limit": 40}
    real_cfr, real_pwrite = os.copy_file_range, os.pwrite

    def full(*args, **kw):
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    real = real_cfr
    monkeypatch.setattr(os, "copy_file_range", full)
    # Every run on its own, so that the kernel copy (not a gathered read) hits the full disk.
    monkeypatch.setattr(stackcopy, "GATHER_GAP_BYTES", -1)
    out = demo.project_dir / "J8"
    with pytest.raises(DiskFullError, match="no space left"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, threads=2)
    assert calls["n"] > 40
    assert not out.exists()
    # The pread/pwrite path (no copy_file_range) fails the same way.
    calls["n"], calls["limit"] = 0, 6
    real = real_pwrite
    monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EXDEV, "cross-device")))
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(DiskFullError):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, threads=1)
    assert not out.exists()


@pytest.fixture
def tiny_fs(tmp_path):
    with tmpfs(tmp_path / "tiny", "1m") as mnt:
        yield mnt


def test_full_filesystem(demo, tiny_fs, monkeypatch):
    out = tiny_fs / "out"
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "space" in proc.stderr
    assert not final_files(tiny_fs)
    # Without the up-front free-space check the disk fills mid-write: same outcome.
    monkeypatch.setattr(consolidate_mod, "_free_bytes", lambda path: None)
    with pytest.raises(DiskFullError):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    assert not final_files(tiny_fs)
    assert not [p for p in tiny_fs.rglob("*") if p.name.endswith(".stacktools-tmp")]


def test_concurrent_run_is_refused(demo):
    out = demo.project_dir / "J8"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another"):
            consolidate(demo.selected_cs, out, project_dir=demo.project_dir)
    finally:
        os.close(fd)
    assert not final_files(out)


# The CLI with each stack copy and each removal slowed down (inside the temporary
# file's lifetime) and announced on stdout, so a test can kill it at a chosen step.
SLOW_RUN = """
import os, sys, time
import stacktools.consolidate.run as co
delay = float(os.environ.get("STACKTOOLS_TEST_DELAY", "0.25"))
def slowed(real, what):
    def run(*args, **kw):
        print(what, flush=True)
        time.sleep(delay)
        return real(*args, **kw)
    return run
co.copy_to_file = slowed(co.copy_to_file, "copy")  # each stack, whichever copy path
co.unlink_own = slowed(co.unlink_own, "unlink")
from stacktools.cli.app import main
sys.argv = ["stacktools"] + sys.argv[1:]
main()
"""


def start_slow(args: list[str], delay: float = 0.25) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "STACKTOOLS_TEST_DELAY": str(delay)})


def kill_mid_run(proc: subprocess.Popen, stacks: Path, done: int = 1) -> None:
    """SIGKILL a slowed run once ``done`` stacks are final and another is being written."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = os.listdir(stacks) if stacks.is_dir() else []
        finished = [n for n in names if not n.startswith(".")]
        temps = [n for n in names if n.endswith(".stacktools-tmp")]
        if len(finished) >= done and temps:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the slowed run never got going")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_9_then_rerun_completes(demo, tmp_path):
    out = demo.project_dir / "J8"
    args = ["consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
            "--out", str(out), "--passthrough", str(demo.passthrough_cs), "--threads", "1",
            "--quiet"]
    proc = start_slow(args)
    stacks = out / "stacks"
    kill_mid_run(proc, stacks, done=2)
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out / MANIFEST).read_text())
    expected = {Path(s["path"]).name: s["bytes"] for s in manifest["stacks"]}
    # Nothing partial under a final name: every final stack is complete; no .cs yet.
    finals = [p for p in final_files(out)]
    assert finals and all(p.parent == stacks for p in finals)
    for p in finals:
        assert p.stat().st_size == expected[p.name]
    assert len(finals) < len(expected), "the kill landed after the last stack"
    assert any(n.endswith(".stacktools-tmp") for n in os.listdir(stacks))
    kept = {p.name: p.stat().st_ino for p in finals}

    rerun = run_cli(*args, "--json")
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert doc["stacks_resumed"] == len(kept)
    assert not [n for n in os.listdir(stacks) if n.endswith(".stacktools-tmp")]
    for name, ino in kept.items():
        assert (stacks / name).stat().st_ino == ino  # complete stacks were not rewritten
    assert_same_particles(doc["cs"], demo.project_dir, demo.selected_cs, demo.project_dir)
    new_pt = independent.read_cs(doc["passthrough"])
    assert (new_pt["uid"] == independent.read_cs(doc["cs"])["uid"]).all()
    assert independent.result_group(doc["csg"])["results"]["ctf"]["metafile"] == \
        ">" + Path(doc["passthrough"]).name


def test_failed_verification_leaves_nothing(demo, monkeypatch):
    from stacktools.errors import VerificationError
    monkeypatch.setattr(consolidate_mod, "check_stack", lambda stack, sources, **kw:
                        f"{stack.path}: particle 0 differs from its source")
    out = demo.project_dir / "J8"
    with pytest.raises(VerificationError, match="differs"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, verify=True)
    assert not out.exists()


# --- --force over an earlier consolidation --------------------------------------------

def _reselect(demo, seed: int, stacks_used: int) -> None:
    """Write another selection under the same names (as rerunning Select 2D does).

    It takes particles from the first ``stacks_used`` source stacks only, so some
    of the earlier consolidation's stacks have no counterpart in the new one. Its
    passthrough carries ``blob/*`` too, so it points at pixels like the main .cs.
    """
    full = read_cs(demo.extracted_cs)
    names = np.unique(full["blob/path"])[:stacks_used]
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(np.isin(full["blob/path"], names))
    pick = rng.permutation(rows)[:len(rows) // 2]
    write_cs(demo.selected_cs, full[pick])
    write_cs(demo.passthrough_cs, full[pick])


def _truth(demo) -> dict[int, bytes]:
    """uid -> the pixels of that particle in the extract stacks, read independently."""
    return independent.particles_by_uid(demo.extracted_cs, demo.project_dir)


def assert_cs_files_honest(out: Path, project: Path, truth: dict[int, bytes],
                           selections: list[set[int]]) -> int:
    """Every .cs under a final name in OUT holds one whole selection and its exact pixels.

    Returns the number of such files.
    """
    found = 0
    for p in sorted(out.glob("*.cs")):
        rows = independent.read_cs(p)
        uids = {int(u) for u in rows["uid"]}
        assert uids in selections, f"{p.name}: holds no selection it was made from"
        for r in rows if "blob/path" in rows.dtype.names else ():
            img = independent.read_particle(independent.blob_file(project, r["blob/path"]),
                                            int(r["blob/idx"]))
            assert img.tobytes() == truth[int(r["uid"])], \
                f"{p.name}: uid {int(r['uid'])} reads another particle's pixels"
        found += 1
    return found


def assert_only_own_outputs(out: Path, doc: dict) -> None:
    """OUT holds the manifest and exactly the outputs of the run that wrote it."""
    manifest = json.loads((out / MANIFEST).read_text())
    own = {s["path"] for s in manifest["stacks"]} | {Path(doc["cs"]).name, Path(doc["csg"]).name}
    if doc["passthrough"]:
        own.add(Path(doc["passthrough"]).name)
    present = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()}
    assert present == own | {MANIFEST}
    assert manifest["stale"] == []


def test_force_rerun_killed_anywhere_never_serves_wrong_pixels(demo, tmp_path):
    out = demo.project_dir / "J8"
    args = ["consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
            "--out", str(out), "--passthrough", str(demo.passthrough_cs), "--threads", "1",
            "--quiet", "--force"]
    truth = _truth(demo)
    sel_a = {int(u) for u in read_cs(demo.selected_cs)["uid"]}
    first = consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                        passthrough=demo.passthrough_cs)
    template = tmp_path / "template"
    shutil.copytree(out, template)
    _reselect(demo, seed=1, stacks_used=8)
    sel_b = {int(u) for u in read_cs(demo.selected_cs)["uid"]}
    new_total = len(np.unique(read_cs(demo.selected_cs)["blob/path"]))
    rng = np.random.default_rng(2026)
    # Steps of a full run: a removal per .csg and .cs name (old and new), a copy per new
    # stack, then a removal per old stack the new run does not reuse.
    steps = 6 + new_total + (first.stacks - new_total) + 2
    mid_stacks = after_cs = before_any = 0
    for _ in range(20):
        shutil.rmtree(out)
        shutil.copytree(template, out)
        inodes = {p.name: p.stat().st_ino for p in (out / "stacks").iterdir()}
        kill_after = int(rng.integers(0, steps))
        proc = start_slow(args, delay=0.05)
        seen = 0
        while seen <= kill_after:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.strip() in ("copy", "unlink")
        time.sleep(float(rng.uniform(0, 0.05)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, proc.stderr.read()
        now = {p.name: p.stat().st_ino for p in (out / "stacks").iterdir()
               if not p.name.startswith(".")}
        rewritten = sum(1 for n, ino in now.items() if inodes.get(n) != ino)
        mid_stacks += 0 < rewritten < new_total
        before_any += rewritten == 0
        # The property: whatever the kill point, each .cs reads back its own pixels,
        # and a .csg names only complete files with its own row counts.
        n_cs = assert_cs_files_honest(out, demo.project_dir, truth, [sel_a, sel_b])
        for csg in out.glob("*.csg"):
            independent.result_group(csg)
        after_cs += rewritten == new_total and n_cs > 0
        # A rerun of the same command completes, bit-exact, with only its own outputs.
        res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                          passthrough=demo.passthrough_cs, force=True)
        assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)
        assert_same_particles(res.passthrough, demo.project_dir, demo.passthrough_cs,
                              demo.project_dir)
        assert_only_own_outputs(out, res.to_dict())
    # The kills really landed mid-work: some with a part of the stacks rewritten.
    print(f"kills: {mid_stacks} mid-stacks, {before_any} before any, {after_cs} after the .cs")
    assert mid_stacks >= 5, (mid_stacks, before_any, after_cs)


def test_force_rerun_that_fails_leaves_no_wrong_cs(demo, monkeypatch):
    out = demo.project_dir / "J8"
    truth = _truth(demo)
    sel_a = {int(u) for u in read_cs(demo.selected_cs)["uid"]}
    consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                passthrough=demo.passthrough_cs)
    _reselect(demo, seed=3, stacks_used=8)
    sel_b = {int(u) for u in read_cs(demo.selected_cs)["uid"]}
    real = consolidate_mod._write_stack
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise DiskFullError("injected: no space left on the device while writing")
        return real(*args, **kw)

    monkeypatch.setattr(consolidate_mod, "_write_stack", failing)
    with pytest.raises(DiskFullError):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                    passthrough=demo.passthrough_cs, force=True, threads=1)
    assert calls["n"] == 4
    assert_cs_files_honest(out, demo.project_dir, truth, [sel_a, sel_b])
    monkeypatch.setattr(consolidate_mod, "_write_stack", real)
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                      passthrough=demo.passthrough_cs, force=True)
    assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)
    assert_only_own_outputs(out, res.to_dict())


def test_completed_force_run_leaves_only_its_own_outputs(demo, tmp_path):
    out = demo.project_dir / "J8"
    consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                passthrough=demo.passthrough_cs)
    _reselect(demo, seed=4, stacks_used=5)
    other_pt = tmp_path / "J9_passthrough.cs"  # a passthrough under another name
    other_pt.write_bytes(demo.passthrough_cs.read_bytes())
    res = consolidate(demo.selected_cs, out, project_dir=demo.project_dir,
                      passthrough=other_pt, force=True)
    assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)
    assert_only_own_outputs(out, res.to_dict())
