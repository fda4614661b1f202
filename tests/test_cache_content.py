"""A damaged or stale copy is never served: warm check, content digests, verify."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import xxhash

from stacktools.cache import Cache
from tests.independent import read_bytes

SSD_ROOT = "stacktools-cache"


def _cache(ssd: Path) -> Cache:
    return Cache(ssd, reserve_mb=0)


def _edit_in_place(path: str, keep_mtime: bool) -> None:
    """Flip one byte inside ``path`` (same size), optionally restoring its mtime (as cp -p does)."""
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(2000)
        b = fh.read(1)
        fh.seek(2000)
        fh.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_warm_sync_does_not_serve_a_copy_edited_in_place(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    _cache(ssd).ensure(paths)
    time.sleep(2.2)             # the cache directories settle, as they have before any real job
    _cache(ssd).ensure(paths)   # warm, as a second job would see it
    cached = _cache(ssd).cached_path(os.path.realpath(paths[0]))
    _edit_in_place(cached, keep_mtime=False)
    res = _cache(ssd).ensure(paths)
    assert res.copied == 1 and res.copies == [os.path.realpath(paths[0])]
    assert read_bytes(res.paths[paths[0]]) == read_bytes(paths[0])


def test_digest_recorded_is_xxh3_128_of_the_source(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    _cache(ssd).ensure(paths)
    want = {os.path.realpath(p): "xxh3_128:" + xxhash.xxh3_128(read_bytes(p)).hexdigest() for p in paths}
    ledger = [json.loads(x) for x in (ssd / SSD_ROOT / "ledger.jsonl").read_text().splitlines()]
    copies = [r for r in ledger if r.get("op", "copy") == "copy"]  # "tmp" lines name temporaries
    assert {r["key"]: r["digest"] for r in copies} == want
    assert {r["key"]: r["digest"] for r in _cache(ssd).index.all()} == want


def test_verify_finds_copy_damaged_with_mtime_restored_without_reading_sources(tmp_path, demo, monkeypatch):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    _cache(ssd).ensure(paths)
    key = os.path.realpath(paths[3])
    cache = _cache(ssd)
    _edit_in_place(cache.cached_path(key), keep_mtime=True)
    import stacktools.cache.validity as store
    read = []
    real = store.digest_file
    monkeypatch.setattr(store, "digest_file", lambda p: (read.append(str(p)), real(p))[1])
    out = cache.verify()
    assert [(p["source"], p["problem"]) for p in out["problems"]] == [
        (key, "copy damaged (content differs from its digest)")]
    assert read and not any(p.startswith(str(demo.project_dir)) for p in read)
    fixed = _cache(ssd).verify(fix=True)
    assert fixed["problems"][0]["removed"]
    assert not os.path.exists(cache.cached_path(key))


def test_verify_content_finds_source_changed_with_same_size_and_mtime(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    _cache(ssd).ensure(paths)
    _edit_in_place(paths[2], keep_mtime=True)
    assert _cache(ssd).verify()["problems"] == []   # only the copies are read: they are intact
    out = _cache(ssd).verify(content=True)
    assert [p["source"] for p in out["problems"]] == [os.path.realpath(paths[2])]


def test_sync_check_content_replaces_a_stale_copy_with_same_size_and_mtime(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    _cache(ssd).ensure(paths)
    _edit_in_place(paths[1], keep_mtime=True)      # the cp -p / rsync -t / touch -d case
    stale = _cache(ssd).ensure(paths)
    assert stale.copied == 0 and read_bytes(stale.paths[paths[1]]) != read_bytes(paths[1])
    r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                "--reserve-mb", "0", "--check-content", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["copies"] == [os.path.realpath(paths[1])]
    for p in paths:
        assert read_bytes(d["paths"][p]) == read_bytes(p)
