"""The SSD cache in one process: sync, validity, ownership, index, CLI contract."""

from __future__ import annotations

import filecmp
import json
import os
import sqlite3
from pathlib import Path

import pytest

from stacktools.cache import Cache
from stacktools.errors import CacheForeignPathError, CacheFullError, PathEscapeError
from stacktools.particles import ParticleSet
from tests.helpers import cli_json, final_files, ledger_copies, run_cli


@pytest.fixture
def ssd(tmp_path: Path) -> Path:
    p = tmp_path / "ssd"
    p.mkdir()
    return p


@pytest.fixture
def pset(demo) -> ParticleSet:
    return ParticleSet.open(demo.selected_cs, demo.project_dir)


def _cache(ssd, **kw) -> Cache:
    kw.setdefault("reserve_mb", 0)
    return Cache(ssd, **kw)


def test_sync_copies_then_reuses(ssd, pset):
    cache = _cache(ssd)
    first = cache.ensure(pset)
    assert first.copied == len(pset.stack_paths) and first.reused == 0
    assert first.bytes_copied == sum(os.path.getsize(p) for p in pset.stack_paths)
    for src, dst in first.paths.items():
        assert Path(dst).is_relative_to(cache.files_dir)
        assert filecmp.cmp(src, dst, shallow=False)
        assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    second = cache.ensure(pset)
    assert second.copied == 0 and second.reused == len(pset.stack_paths)
    assert second.paths == first.paths
    assert sorted(ledger_copies(ssd)) == sorted(first.copies)


def test_cli_contract_plan_equals_sync(ssd, demo):
    common = [demo.selected_cs, "--project-dir", demo.project_dir, "--ssd-path", ssd,
              "--reserve-mb", "0"]
    plan = cli_json("cache", "plan", *common)
    assert plan["fits"] is True and isinstance(plan["evict"], list)
    assert plan["consolidated_bytes"] < plan["cache_bytes"]
    sync = cli_json("cache", "sync", *common, "--quiet", "--threads", "2")
    for k in ("copied", "reused", "bytes_copied", "evicted", "bytes_evicted", "paths"):
        assert k in sync
    assert sync["bytes_copied"] == plan["bytes_to_copy"]
    assert sync["copied"] == plan["files_to_copy"]
    for src, dst in sync["paths"].items():
        assert os.path.isabs(src) and os.path.isabs(dst)
        assert filecmp.cmp(src, dst, shallow=False)
    warm = cli_json("cache", "plan", *common)
    assert warm["bytes_to_copy"] == 0 and warm["files_to_copy"] == 0
    status = cli_json("cache", "status", "--ssd-path", ssd)
    assert status["entries"] == sync["copied"] and status["bytes"] == sync["bytes_copied"]
    inv = cli_json("cache", "status", "--ssd-path", ssd, "--inventory")["inventory"]
    assert {e["key"] for e in inv["entries"]} == {os.path.realpath(p) for p in sync["paths"]}
    run_cli("cache", "clear", "--ssd-path", ssd, "--yes", check=True)
    assert cli_json("cache", "status", "--ssd-path", ssd)["entries"] == 0
    assert final_files(ssd) == []


def test_execute_runs_the_plan_object(ssd, pset):
    cache = _cache(ssd)
    plan = cache.plan(pset)
    res = cache.execute(plan)
    assert res.plan is plan and not res.replanned
    assert res.bytes_copied == plan.bytes_to_copy and res.copied == plan.files_to_copy


def test_does_not_fit_fails_before_copying(ssd, demo):
    total = sum(os.path.getsize(p) for p in demo.stacks)
    p = run_cli("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir,
                "--ssd-path", ssd, "--reserve-mb", "0", "--quota-mb", str(total / 2e6), "--json")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "does not fit" in p.stderr and "MB" in p.stderr
    assert "Traceback" not in p.stderr
    assert final_files(ssd) == []
    r = run_cli("cache", "plan", demo.selected_cs, "--project-dir", demo.project_dir, "--ssd-path", ssd,
                "--reserve-mb", "0", "--quota-mb", str(total / 2e6), "--json")
    assert r.returncode == 1  # "does not fit", as `cache place` says it
    plan = json.loads(r.stdout)
    assert plan["fits"] is False and plan["shortfall_bytes"] > 0


def test_partial_caches_what_fits_in_order(ssd, pset):
    sizes = [os.path.getsize(p) for p in pset.stack_paths]
    quota = sum(sizes[:3]) + 1
    cache = _cache(ssd, quota_mb=quota / 1e6)
    with pytest.raises(CacheFullError):
        cache.ensure(pset)
    res = cache.ensure(pset, partial=True)
    assert res.copied >= 3 and res.from_source
    assert res.bytes_copied <= quota
    for src in res.from_source:
        assert res.paths[src] == src


def test_changed_source_is_copied_again(ssd, pset):
    cache = _cache(ssd)
    cache.ensure(pset)
    src = pset.stack_paths[0]
    with open(src, "r+b") as fh:
        fh.seek(2000)
        fh.write(b"changed!")
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    res = cache.ensure(pset)
    assert res.copied == 1 and res.copies == [os.path.realpath(src)]
    assert filecmp.cmp(src, res.paths[str(src)], shallow=False)
    assert cache.status()["entries"] == len(pset.stack_paths)


def test_symlink_prepopulates(ssd, pset, tmp_path):
    cache = _cache(ssd)
    elsewhere = tmp_path / "other-ssd"
    elsewhere.mkdir()
    src = pset.stack_paths[0]
    copy = elsewhere / "copy.mrc"
    copy.write_bytes(Path(src).read_bytes())
    st = os.stat(src)
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    link = Path(cache.cached_path(os.path.realpath(src)))
    link.parent.mkdir(parents=True)
    link.symlink_to(copy)
    res = cache.ensure(pset)
    assert res.copied == len(pset.stack_paths) - 1
    assert link.is_symlink()
    # Not the cache's own: clear leaves both the link and its target.
    cache.clear()
    assert link.is_symlink() and copy.exists()


def test_foreign_files_survive_clear_and_eviction(ssd, pset, tmp_path):
    cache = _cache(ssd)
    outside = tmp_path / "outside.dat"
    outside.write_bytes(b"x" * 1000)
    files = cache.files_dir
    foreign = files / "foreign.dat"
    foreign.write_bytes(b"f" * 1000)
    (files / "link-out").symlink_to(outside)
    next_to_entry = Path(cache.cached_path(os.path.realpath(pset.stack_paths[0]))).parent
    next_to_entry.mkdir(parents=True)
    (next_to_entry / "not-ours.mrc").write_bytes(b"n" * 100)
    (next_to_entry / "link-to-outside.mrc").symlink_to(outside)
    (ssd / "beside-the-cache.txt").write_text("keep")
    cache.ensure(pset)
    sizes = sum(os.path.getsize(p) for p in pset.stack_paths)
    # Evict everything evictable through a quota that only fits half.
    cache2 = _cache(ssd, quota_mb=sizes / 2e6)
    cache2.evict(nbytes=sizes)
    cache.clear()
    assert foreign.read_bytes() == b"f" * 1000
    assert (files / "link-out").is_symlink() and outside.read_bytes() == b"x" * 1000
    assert (next_to_entry / "not-ours.mrc").exists()
    assert (next_to_entry / "link-to-outside.mrc").is_symlink()
    assert (ssd / "beside-the-cache.txt").exists()
    assert cache.status()["entries"] == 0


def test_entry_replaced_by_hand_is_not_deleted(ssd, pset, tmp_path):
    cache = _cache(ssd)
    res = cache.ensure(pset)
    dst = Path(next(iter(res.paths.values())))
    target = tmp_path / "mine.mrc"
    target.write_bytes(b"user data")
    os.chmod(dst, 0o644)
    dst.unlink()
    dst.symlink_to(target)
    cache.clear()
    assert dst.is_symlink() and target.read_bytes() == b"user data"


def test_dotdot_paths_cannot_write_outside(ssd, demo, tmp_path):
    # blob/path with ../ pointing at a stack outside the project.
    out_dir = tmp_path / "elsewhere"
    out_dir.mkdir()
    stack = Path(demo.stacks[0])
    escaped = out_dir / stack.name
    escaped.write_bytes(stack.read_bytes())
    pset = ParticleSet.open(demo.selected_cs, demo.project_dir)
    data = pset.data.copy()
    rel = os.path.relpath(escaped, demo.project_dir).encode()
    assert rel.startswith(b"../")
    data = data.astype([(n, f"S{len(rel) + 8}") if n == "blob/path" else (n, data.dtype.fields[n][0])
                        for n in data.dtype.names])
    data["blob/path"] = b"J5/../" + rel
    # The cache must hold even when the particle model is told to allow such paths.
    evil = ParticleSet(data, demo.project_dir, allow_outside_project=True)
    before = {p for p in tmp_path.rglob("*")}
    cache = _cache(ssd)
    res = cache.ensure(evil)
    after = {p for p in tmp_path.rglob("*")}
    for p in after - before:
        assert p.is_relative_to(ssd)
    (dst,) = res.paths.values()
    assert Path(dst).resolve().is_relative_to(cache.files_dir)


def test_symlinked_directory_in_cache_is_refused(ssd, pset, tmp_path):
    cache = _cache(ssd)
    trap = tmp_path / "trap"
    trap.mkdir()
    src = os.path.realpath(pset.stack_paths[0])
    parent = Path(cache.cached_path(src)).parent
    parent.parent.mkdir(parents=True)
    parent.symlink_to(trap, target_is_directory=True)
    with pytest.raises(PathEscapeError):
        cache.ensure(pset)
    assert list(trap.iterdir()) == []


def test_deleted_by_hand_between_runs(ssd, pset):
    cache = _cache(ssd)
    res = cache.ensure(pset)
    victims = list(res.paths.values())[:3]
    for v in victims:
        os.unlink(v)
    res2 = _cache(ssd).ensure(pset)
    assert res2.copied == 3
    for src, dst in res2.paths.items():
        assert filecmp.cmp(src, dst, shallow=False)
    # Whole tree gone by hand: still recovers.
    import shutil
    shutil.rmtree(cache.files_dir / Path(os.path.realpath(pset.stack_paths[0])).parts[1])
    res3 = _cache(ssd).ensure(pset)
    assert res3.copied == len(pset.stack_paths)
    assert _cache(ssd).status()["entries"] == len(pset.stack_paths)


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_index_rebuilt_from_directory(ssd, pset, damage):
    cache = _cache(ssd)
    res = cache.ensure(pset)
    (cache.files_dir / "foreign.mrc").write_bytes(b"z" * 10)
    cache.index.close()
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(cache.root / "index.db") + suffix)
        if p.exists():
            p.unlink()
    if damage == "garbage":
        (cache.root / "index.db").write_bytes(b"this is not a database" * 100)
    fresh = _cache(ssd)
    st = fresh.status()
    assert st["entries"] == len(res.paths) and st["bytes"] == res.bytes_copied
    assert fresh.ensure(pset).copied == 0
    fresh.clear()
    assert (fresh.files_dir / "foreign.mrc").exists()
    assert fresh.status()["entries"] == 0


def test_crashed_copy_temps_are_swept(ssd, pset):
    cache = _cache(ssd)
    src = os.path.realpath(pset.stack_paths[0])
    dest = Path(cache.cached_path(src))
    dest.parent.mkdir(parents=True)
    # A crashed copy's temporary: named in the ledger before it was made.
    tmp = dest.parent / f".{dest.name}.abc123.stacktools-tmp"
    cache.index.ledger.append({"op": "tmp", "t": 0, "key": src, "tmp": tmp.name})
    tmp.write_bytes(b"half")
    # A file that merely looks like a temporary: not the cache's, so it stays.
    foreign = dest.parent / f".{dest.name}.abcdefgh.stacktools-tmp"
    foreign.write_bytes(b"mine")
    cache.ensure(pset)
    assert not tmp.exists()
    assert foreign.read_bytes() == b"mine"


def test_lru_eviction_skips_pinned_entries(ssd, demo):
    cache = _cache(ssd)
    stacks = [str(p) for p in demo.stacks]
    sizes = {s: os.path.getsize(s) for s in stacks}
    a, b, c = stacks[:4], stacks[4:8], stacks[8:]
    with cache.ensure(a, hold=True):
        cache.ensure(b)
        quota = sum(sizes[s] for s in a + c) + sum(sizes[s] for s in b) // 2
        small = _cache(ssd, quota_mb=quota / 1e6)
        plan = small.plan(c)
        assert plan.fits
        evicted = {e.key for e in plan.evict}
        assert evicted and evicted <= {os.path.realpath(s) for s in b}
        assert not any(e.in_use for e in plan.evict)
        res = small.execute(plan)
        assert res.evicted == len(plan.evict)
        for s in a:
            assert os.path.exists(cache.cached_path(os.path.realpath(s)))
    # Once released, a set may be evicted.
    assert _cache(ssd).evict(nbytes=sum(sizes.values()))["removed"] > 0


def test_expired_entries_go_first(ssd, demo):
    stacks = [str(p) for p in demo.stacks]
    cache = _cache(ssd)
    cache.ensure(stacks[:1])
    cache.ensure(stacks[1:6])
    # Age the first entry and the record of the set that used it by 40 days.
    con = sqlite3.connect(cache.root / "index.db")
    con.execute("UPDATE entries SET last_access = last_access - 40*86400 WHERE key = ?",
                (os.path.realpath(stacks[0]),))
    con.execute("UPDATE sets SET last_access = last_access - 40*86400, folded = 0 WHERE set_id IN "
                "(SELECT set_id FROM set_members WHERE key = ?)", (os.path.realpath(stacks[0]),))
    con.commit()
    con.close()
    plan = _cache(ssd).plan(stacks[6:])
    assert [e.key for e in plan.expire] == [os.path.realpath(stacks[0])]
    assert _cache(ssd).clean()["removed"] == 1
    # Using an entry again makes it young: the set's access is folded in.
    cache.ensure(stacks[1:3])
    assert _cache(ssd).plan(stacks[6:]).expire == []


def test_write_cs_points_at_cache(ssd, demo, tmp_path):
    out = tmp_path / "cached.cs"
    sync = cli_json("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir,
                    "--ssd-path", ssd, "--reserve-mb", "0", "--quiet", "--write-cs", out)
    cached = ParticleSet.open(out, tmp_path)
    orig = ParticleSet.open(demo.selected_cs, demo.project_dir)
    assert len(cached) == len(orig)
    assert set(map(str, cached.stack_paths)) == set(sync["paths"].values())
    from stacktools.formats.mrc import read_particle
    for k in (0, len(orig) - 1):
        i = int(orig.data["blob/idx"][k])
        a = read_particle(orig.stack_paths[orig.stack_codes[k]], i)
        b = read_particle(cached.stack_paths[cached.stack_codes[k]], i)
        assert (a == b).all()


def test_project_default_and_command_while_pinned(ssd, demo):
    run_cli("cache", "default", "--project-dir", demo.project_dir, "--off", check=True)
    d = cli_json("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir,
                 "--ssd-path", ssd, "--reserve-mb", "0", "--quiet")
    assert d["use_cache"] is False and d["copied"] == 0
    assert all(k == v for k, v in d["paths"].items())
    run_cli("cache", "default", "--project-dir", demo.project_dir, "--unset", check=True)
    assert cli_json("cache", "default", "--project-dir", demo.project_dir)["use_cache"] is None
    p = run_cli("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir,
                "--ssd-path", ssd, "--reserve-mb", "0", "--quiet", "--",
                "python", "-c", "import os,sys; sys.exit(len(os.listdir(sys.argv[1])) + 3)",
                str(ssd / "stacktools-cache" / "pins"))
    assert p.returncode == 4  # one live pin while the command ran
    assert list((ssd / "stacktools-cache" / "pins").iterdir()) == []


def test_verify_finds_changed_sources(ssd, pset):
    cache = _cache(ssd)
    cache.ensure(pset)
    src = pset.stack_paths[1]
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5))
    v = cache.verify()
    assert [p["problem"] for p in v["problems"]] == ["source changed"]
    v = cache.verify(fix=True, content=True)
    assert v["problems"][0]["removed"]
    assert cache.verify()["problems"] == []


def test_ledger_is_compacted_and_still_proves_ownership(ssd, pset):
    cache = _cache(ssd)
    res = cache.ensure(pset)
    for _ in range(3):
        cache.clear()
        cache.ensure(pset)
    cache.index.close()
    lines_before = len(ledger_copies(ssd))
    assert lines_before == 4 * len(res.paths)
    cache = _cache(ssd)
    cache.index.compact_ledger(min_bytes=0)
    assert sorted(ledger_copies(ssd)) == sorted(os.path.realpath(p) for p in res.paths)
    cache.index.close()
    (cache.root / "index.db").unlink()
    assert _cache(ssd).status()["entries"] == len(res.paths)


def test_ledger_kept_open_follows_a_compaction_and_refuses_a_planted_symlink(ssd, pset, tmp_path):
    cache = _cache(ssd)
    cache.ensure(pset)
    index, ledger = cache.index, cache.root / "ledger.jsonl"
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    with index.ledger.kept_open():
        index.ledger.append({"op": "tmp", "key": "/a", "tmp": "one"})
        index.compact_ledger(min_bytes=0)  # replaces ledger.jsonl under the open descriptor
        index.ledger.append({"op": "tmp", "key": "/a", "tmp": "two"})
        assert json.loads(ledger.read_text().splitlines()[-1])["tmp"] == "two"
        ledger.rename(tmp_path / "moved.jsonl")
        ledger.symlink_to(target)
        with pytest.raises(CacheForeignPathError):
            index.ledger.append({"op": "tmp", "key": "/a", "tmp": "three"})
    assert target.read_text() == ""
    assert "three" not in (tmp_path / "moved.jsonl").read_text()


def test_directory_moved_out_and_symlinked_back_is_not_followed(ssd, pset, tmp_path):
    cache = _cache(ssd)
    res = cache.ensure(pset)
    entry_dir = Path(next(iter(res.paths.values()))).parent
    moved = tmp_path / "moved-out"
    entry_dir.rename(moved)
    entry_dir.symlink_to(moved, target_is_directory=True)
    before = sorted(p.name for p in moved.iterdir())
    cache.clear()
    assert sorted(p.name for p in moved.iterdir()) == before
    assert cache.status()["entries"] == 0


def test_evict_a_set_even_after_its_sources_are_gone(ssd, demo):
    common = ["--project-dir", demo.project_dir, "--ssd-path", ssd]
    sync = cli_json("cache", "sync", demo.selected_cs, *common, "--reserve-mb", "0", "--quiet")
    for src in list(sync["paths"])[:2]:
        os.unlink(src)
    d = cli_json("cache", "evict", demo.selected_cs, *common)
    assert d["removed"] == sync["copied"] and d["bytes_removed"] == sync["bytes_copied"]
    assert final_files(ssd) == []


def test_missing_ssd_path_is_created_but_a_file_is_refused(tmp_path, demo):
    from stacktools.errors import CacheConfigError
    job_ssd = tmp_path / "scratch" / "user" / "job42"  # a per-job path, not made yet
    out = cli_json("cache", "sync", demo.selected_cs, "--project-dir", demo.project_dir,
                   "--ssd-path", job_ssd, "--reserve-mb", 0, "--quiet", "--create")
    assert out["copied"] == len(ParticleSet.open(demo.selected_cs, demo.project_dir).stack_paths)
    assert (job_ssd / "stacktools-cache").is_dir()
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    with pytest.raises(CacheConfigError, match="not a directory"):
        Cache(blocker, reserve_mb=0)
    assert blocker.read_text() == "x"
