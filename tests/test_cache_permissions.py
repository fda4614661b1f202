"""Permissions on a shared node: no copy is readable by anyone who could not read its source."""

from __future__ import annotations

import os
import stat

import pytest

from stacktools.cache import Cache
from tests.helpers import project, run_cli


@pytest.fixture
def stacks(tmp_path):
    made, pset = project(tmp_path / "P1", micrographs=4, per=(3, 5), box=32)
    return [str(p) for p in pset.stack_paths]


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o755, 0o444, 0o604])
def test_a_copy_keeps_the_sources_bits_minus_write(stacks, tmp_path, mode):
    os.chmod(stacks[0], mode)
    res = Cache(tmp_path / "ssd", reserve_mb=0, create=True).ensure(stacks[:1])
    copy = os.stat(res.paths[stacks[0]])
    assert stat.S_IMODE(copy.st_mode) == mode & 0o555


def test_a_copy_gets_the_sources_group(stacks, tmp_path):
    os.chown(stacks[0], -1, 4242)
    os.chmod(stacks[0], 0o640)
    res = Cache(tmp_path / "ssd", reserve_mb=0, create=True).ensure(stacks[:1])
    copy = os.stat(res.paths[stacks[0]])
    assert copy.st_gid == 4242 and stat.S_IMODE(copy.st_mode) == 0o440


def test_group_bits_go_when_the_group_cannot_be_given(stacks, tmp_path, monkeypatch):
    os.chown(stacks[0], -1, 4242)
    os.chmod(stacks[0], 0o644)

    def refuse(*a):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchown", refuse)  # as for a user outside the source's group
    res = Cache(tmp_path / "ssd", reserve_mb=0, create=True).ensure(stacks[:1])
    assert stat.S_IMODE(os.stat(res.paths[stacks[0]]).st_mode) == 0o404


def test_the_cache_root_is_private_unless_declared_shared(tmp_path):
    Cache(tmp_path / "ssd", reserve_mb=0, create=True)
    assert stat.S_IMODE(os.stat(tmp_path / "ssd" / "stacktools-cache").st_mode) == 0o700
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[cache]\nssd_path = "{tmp_path / "shared"}"\nshared = true\n')
    Cache(config_file=cfg, reserve_mb=0, create=True)
    assert stat.S_IMODE(os.stat(tmp_path / "shared" / "stacktools-cache").st_mode) == 0o1777


def test_status_warns_about_a_world_writable_root(tmp_path):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    cache = Cache(ssd, reserve_mb=0)
    assert cache.status()["warnings"] == []
    os.chmod(cache.root, 0o777)
    assert "sticky" in cache.status()["warnings"][0]
    p = run_cli("cache", "status", "--ssd-path", ssd, check=True)
    assert "warning:" in p.stderr and "sticky" in p.stderr
    os.chmod(cache.root, 0o1777)
    assert Cache(ssd, reserve_mb=0).status()["warnings"] == []
