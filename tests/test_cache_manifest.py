"""Directory manifests: a settled cache directory is checked with one fstat."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import stacktools.cache.manifest as manifest
from stacktools.cache import Cache

SETTLE = 0.05


@pytest.fixture(autouse=True)
def short_settle(monkeypatch):
    monkeypatch.setattr(manifest, "SETTLE_NS", int(SETTLE * 1e9))


@pytest.fixture
def warm(tmp_path, demo):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    Cache(ssd, reserve_mb=0).ensure(paths)
    time.sleep(2 * SETTLE)
    Cache(ssd, reserve_mb=0).ensure(paths)   # settled: this check writes the manifest
    assert list((ssd / "stacktools-cache" / "manifests").iterdir())
    return ssd, paths


def _count_stats(monkeypatch):
    calls = []
    real = os.stat

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)
    monkeypatch.setattr(os, "stat", counting)
    return calls


def test_settled_directory_needs_no_stat_per_copy(warm, monkeypatch):
    ssd, paths = warm
    cache = Cache(ssd, reserve_mb=0)
    stacks = cache.sources(paths)
    calls = _count_stats(monkeypatch)
    assert len(cache.check(stacks)) == len(paths)
    assert calls == []


def test_hand_deletion_in_a_settled_directory_is_seen(warm):
    ssd, paths = warm
    cache = Cache(ssd, reserve_mb=0)
    victim = cache.cached_path(os.path.realpath(paths[3]))
    os.unlink(victim)
    res = cache.ensure(paths)
    assert res.copies == [os.path.realpath(paths[3])]
    assert Path(victim).read_bytes() == Path(paths[3]).read_bytes()


def test_changed_source_is_seen_through_the_manifest(warm):
    ssd, paths = warm
    st = os.stat(paths[5])
    os.utime(paths[5], ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    res = Cache(ssd, reserve_mb=0).ensure(paths)
    assert res.copies == [os.path.realpath(paths[5])]


def test_unsettled_directory_is_not_recorded(tmp_path, demo, monkeypatch):
    monkeypatch.setattr(manifest, "SETTLE_NS", int(3600e9))
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    Cache(ssd, reserve_mb=0).ensure(paths)
    Cache(ssd, reserve_mb=0).ensure(paths)
    assert not (ssd / "stacktools-cache" / "manifests").exists() or \
        not list((ssd / "stacktools-cache" / "manifests").iterdir())


def test_prepopulated_symlink_is_always_stated(warm, tmp_path, monkeypatch):
    ssd, paths = warm
    cache = Cache(ssd, reserve_mb=0)
    key = os.path.realpath(paths[0])
    dst = Path(cache.cached_path(key))
    other = tmp_path / "other.mrc"
    other.write_bytes(dst.read_bytes())
    st = os.stat(paths[0])
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache.evict(keys=[key])
    dst.symlink_to(other)
    time.sleep(2 * SETTLE)
    cache.ensure(paths)                      # records the settled directory again
    stacks = cache.sources(paths)
    calls = _count_stats(monkeypatch)
    assert len(cache.check(stacks)) == len(paths)
    assert set(calls) == {dst.name}          # the symlink, and only it, is stat-ed
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    monkeypatch.undo()
    assert key not in Cache(ssd, reserve_mb=0).check(cache.sources(paths))
