"""The cache never follows a symlink at its own paths and never removes what it did not make.

A link is planted at each of the cache's own names, pointing at a directory outside
the cache; every command then runs through the CLI, and the outside tree must be
unchanged, by content and size. Commands may refuse (exit 2, one line), never crash.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stacktools.cache import Cache
from tests.helpers import final_files, project, run_cli, subset_cs
from tests.independent import read_particle


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    return project(tmp_path_factory.mktemp("sl") / "P1", micrographs=6, per=(4, 8), box=32)


def _snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.read_bytes())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path):
    """A victim tree outside the cache: a 1,300-byte file, and files in a directory."""
    d = tmp_path / "outside"
    (d / "dir").mkdir(parents=True)
    (d / "victim.bin").write_bytes(bytes(range(256)) * 5 + b"x" * 20)
    for i in range(3):
        (d / "dir" / f"{i}.json").write_bytes(b"{}" * (i + 1))
        (d / "dir" / f"{i}.lock").write_bytes(b"keep")
        (d / "dir" / f"{i}.pin").write_bytes(b"keep")
    return d


def _cli(cmd: list, ssd: Path) -> None:
    p = run_cli(*cmd, "--ssd-path", ssd)
    assert p.returncode in (0, 1, 2), p.stderr
    assert "Traceback" not in p.stderr
    if p.returncode == 2:
        assert p.stderr.count("\n") == 1, p.stderr


def _all_commands(proj, tmp_path, ssd):
    made, pset = proj
    cs = subset_cs(pset, [0, 1, 2], tmp_path / "three.cs")
    for cmd in (["cache", "sync", made.extracted_cs, "--project-dir", made.project_dir,
                 "--reserve-mb", "0", "--quiet"],
                ["cache", "status"], ["cache", "status", "--json"],
                ["cache", "verify", "--fix"], ["cache", "evict", cs, "--project-dir", made.project_dir],
                ["cache", "evict", "--mb", "1"], ["cache", "clean", "--lifetime-days", "0"],
                ["cache", "clear", "--yes"]):
        _cli(cmd, ssd)


PLACES = ["files", "locks", "pins", "manifests", "index.db", "index.db-wal", "ledger.jsonl",
          "space.lock", "locks/entries.lock", "temp name"]


@pytest.mark.parametrize("place", PLACES)
def test_a_symlink_at_any_own_path_is_never_followed(proj, tmp_path, outside, place):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    res = cache.ensure(pset)
    cache.index.close()
    root = cache.root
    before = _snapshot(outside)
    key = os.path.realpath(pset.stack_paths[0])
    os.unlink(cache.cached_path(os.path.realpath(pset.stack_paths[1])))  # the sync copies again
    if place in ("files", "locks", "pins", "manifests"):
        target = root / place
        if place != "manifests":  # an older version's name: the cache no longer makes it
            os.rename(target, tmp_path / f"real-{place}")
        target.symlink_to(outside / "dir" if place != "files" else outside)
    elif place == "temp name":
        d = Path(cache.cached_path(key)).parent
        (d / f".{Path(key).name}.abcdefgh.stacktools-tmp").symlink_to(outside / "victim.bin")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(str(root / "index.db") + suffix).unlink(missing_ok=True) if place.startswith(
                "index.db") else None
        link = root / place
        link.unlink(missing_ok=True)
        link.symlink_to(outside / "victim.bin")
    _all_commands(proj, tmp_path, ssd)
    assert _snapshot(outside) == before
    assert (outside / "victim.bin").stat().st_size == 1300
    assert res.copied > 0


def test_an_old_manifests_dir_or_symlink_is_left_alone(proj, tmp_path, outside):
    """Older versions kept ``manifests/``; the cache no longer makes, reads or follows it."""
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    root = cache.root
    assert not os.path.lexists(root / "manifests")
    (root / "manifests").mkdir()
    (root / "manifests" / "abc.json").write_text("{}")
    cache.ensure(pset)
    status = run_cli("cache", "status", "--json", "--ssd-path", ssd)
    assert status.returncode == 0, status.stderr
    assert not [f for f in json.loads(status.stdout)["foreign_paths"] if "/manifests" in f["path"]]
    assert (root / "manifests" / "abc.json").read_text() == "{}"
    shutil.rmtree(root / "manifests")
    (root / "manifests").symlink_to(outside / "dir")
    before = _snapshot(outside)
    Cache(ssd, reserve_mb=0).ensure(pset)
    _all_commands(proj, tmp_path, ssd)
    assert _snapshot(outside) == before
    assert os.path.islink(root / "manifests")


def test_foreign_temporaries_stay_and_status_lists_them(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    cache.ensure(pset)
    key = os.path.realpath(pset.stack_paths[0])
    d = Path(cache.cached_path(key)).parent
    foreign = d / f".{Path(key).name}.abcdefgh.stacktools-tmp"
    foreign.write_bytes(b"someone's data")
    stray = cache.root / "locks" / "notes.txt"
    stray.write_text("mine")
    st = json.loads(run_cli("cache", "status", "--json", "--ssd-path", ssd, check=True).stdout)
    listed = {i["path"] for i in st["foreign_paths"]}
    assert str(foreign) in listed and str(stray) in listed
    run_cli("cache", "clean", "--lifetime-days", "0", "--ssd-path", ssd, check=True)
    run_cli("cache", "clear", "--yes", "--ssd-path", ssd, check=True)
    assert foreign.read_bytes() == b"someone's data"
    assert stray.read_text() == "mine"
    assert final_files(ssd) == []


def test_a_foreign_file_at_an_entry_is_never_replaced(proj, tmp_path):
    made, pset = proj
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    key = os.path.realpath(pset.stack_paths[0])
    dest = Path(cache.cached_path(key))
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not a copy")  # stale: size and mtime differ from the source
    p = run_cli("cache", "sync", made.extracted_cs, "--project-dir", made.project_dir,
                "--ssd-path", ssd, "--reserve-mb", "0", "--quiet")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "did not make" in p.stderr
    run_cli("cache", "clear", "--yes", "--ssd-path", ssd, check=True)
    assert dest.read_bytes() == b"not a copy"


@pytest.mark.parametrize("length", [231, 240, 255])
def test_long_stack_names_are_cached(tmp_path, length):
    made, pset = project(tmp_path / "P", micrographs=1, per=(3, 3), box=32)
    src = Path(pset.stack_paths[0])
    long = src.with_name(("s" * (length - 4)) + ".mrc")
    assert len(long.name.encode()) == length
    os.link(src, long)
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    res = Cache(ssd, reserve_mb=0).ensure([str(long)])
    assert res.copied == 1
    copy = res.paths[str(long)]
    assert Path(copy).name == long.name
    for i in range(3):
        assert (read_particle(copy, i) == read_particle(long, i)).all()
