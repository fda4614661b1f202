"""stacktools consolidate on bad input, full disks and kill -9: nothing partial under a final name."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import stacktools.consolidate as consolidate_mod
from stacktools.consolidate import MANIFEST, consolidate
from stacktools.csfile import read_cs, write_cs
from stacktools.errors import DiskFullError, OutputError, SourceOverwriteError
from stacktools.mrc import make_header
from stacktools.particles import ParticleSet
from stacktools.verify import verify

CLI = [sys.executable, "-m", "stacktools.cli.app"]


def final_files(outdir: Path) -> list[Path]:
    """Files under OUTDIR with a final (non-hidden) name."""
    if not outdir.exists():
        return []
    return [p for p in outdir.rglob("*") if p.is_file() and not p.name.startswith(".")]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True)


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


def test_mixed_modes_packed_is_exit_2(demo):
    proc = run_cli("consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
                   "--out", str(demo.project_dir / "J8"), "--layout", "packed")
    assert proc.returncode == 2 and "--dtype float32" in proc.stderr


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
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): "
                    + proc.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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


SLOW_RUN = """
import sys, time
import stacktools.stackcopy as sc
real = sc._transfer
def slow(*args, **kw):
    time.sleep(0.25)  # inside the temporary file's lifetime
    return real(*args, **kw)
sc._transfer = slow
from stacktools.cli.app import main
sys.argv = ["stacktools"] + sys.argv[1:]
main()
"""


def test_kill_9_then_rerun_completes(demo, tmp_path):
    out = demo.project_dir / "J8"
    args = ["consolidate", str(demo.selected_cs), "--project-dir", str(demo.project_dir),
            "--out", str(out), "--passthrough", str(demo.passthrough_cs), "--threads", "1",
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stacks = out / "stacks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = os.listdir(stacks) if stacks.is_dir() else []
        done = [n for n in names if not n.startswith(".")]
        temps = [n for n in names if n.endswith(".stacktools-tmp")]
        if len(done) >= 2 and temps:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the slowed run never got going")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out / MANIFEST).read_text())
    expected = {Path(s["path"]).name: s["bytes"] for s in manifest["stacks"]}
    # Nothing partial under a final name: every final stack is complete; no .cs yet.
    finals = [p for p in final_files(out)]
    assert finals and all(p.parent == stacks for p in finals)
    for p in finals:
        assert p.stat().st_size == expected[p.name]
    assert any(n.endswith(".stacktools-tmp") for n in os.listdir(stacks))
    kept = {p.name: p.stat().st_ino for p in finals}

    rerun = run_cli(*args, "--json")
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert doc["stacks_resumed"] == len(kept)
    assert not [n for n in os.listdir(stacks) if n.endswith(".stacktools-tmp")]
    for name, ino in kept.items():
        assert (stacks / name).stat().st_ino == ino  # complete stacks were not rewritten
    assert verify(doc["cs"], demo.selected_cs, project_dir=demo.project_dir).ok
    assert Path(doc["passthrough"]).is_file()


def test_failed_verification_leaves_nothing(demo, monkeypatch):
    import stacktools.verify as verify_mod
    from stacktools.errors import VerificationError
    monkeypatch.setattr(verify_mod, "check_stack", lambda stack, sources, **kw:
                        f"{stack.path}: particle 0 differs from its source")
    out = demo.project_dir / "J8"
    with pytest.raises(VerificationError, match="differs"):
        consolidate(demo.selected_cs, out, project_dir=demo.project_dir, verify=True)
    assert not out.exists()
