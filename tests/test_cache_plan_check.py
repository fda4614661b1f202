"""`cache plan` is a check: it copies, creates and writes nothing; exit 1 when the set does not fit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from stacktools.cache import Cache
from tests.helpers import assert_one_line_error


def _tree(root: Path) -> dict:
    """Every name under ``root`` with its type, size, mtime and content digest."""
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            regular = os.path.isfile(p) and not os.path.islink(p)
            digest = hashlib.sha1(open(p, "rb").read()).hexdigest() if regular else ""
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _plan(run_cli, demo, ssd, *extra):
    return run_cli("cache", "plan", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                   "--reserve-mb", "0", *extra)


def test_plan_writes_nothing_in_a_used_cache(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    Cache(ssd, reserve_mb=0).ensure(paths[:5])
    Cache(ssd, reserve_mb=0).ensure(paths[:3])   # a recorded set access, not yet folded
    # A dead process's pin file: a sync would sweep it, a plan must not.
    (ssd / "stacktools-cache" / "pins" / "gone-1-deadbeef.pin").write_text('{"pid": 1}\n')
    before = _tree(ssd)
    r = _plan(run_cli, demo, ssd, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["files_cached"] == 5 and d["files_to_copy"] == len(paths) - 5
    assert _tree(ssd) == before


def test_plan_does_not_create_a_missing_ssd_path(tmp_path, demo, run_cli):
    ssd = tmp_path / "typo"
    r = _plan(run_cli, demo, ssd)
    assert r.returncode == 2
    assert_one_line_error(r, str(ssd), "does not exist")
    assert not ssd.exists()
    r = _plan(run_cli, demo, ssd, "--create", "--json")   # as `sync --create` would run: still creates nothing
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files_to_copy"] == len(demo.stacks)
    assert not ssd.exists()


def test_sync_refuses_a_missing_ssd_path_unless_asked(tmp_path, demo, run_cli):
    ssd = tmp_path / "unmounted" / "ssd"
    r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--ssd-path", ssd, "--reserve-mb", "0")
    assert_one_line_error(r, str(ssd), "does not exist")
    assert r.returncode == 2 and not ssd.exists() and not ssd.parent.exists()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[cache]\nssd_path = "{ssd}"\nreserve_mb = 0\ncreate_ssd_path = true\n')
    r = run_cli("cache", "sync", demo.extracted_cs, "-p", demo.project_dir, "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["copied"] == len(demo.stacks)


def test_plan_that_does_not_fit_exits_1_and_shows_no_after(tmp_path, demo, run_cli):
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    quota = sum(os.path.getsize(p) for p in demo.stacks) / 2e6
    r = _plan(run_cli, demo, ssd, "--quota-mb", quota)
    assert r.returncode == 1, r.stderr
    assert "does not fit" in r.stdout and "before → after" not in r.stdout and "free now" in r.stdout
    r = _plan(run_cli, demo, ssd, "--quota-mb", quota, "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 1 and d["fits"] is False
    assert d["used_bytes_after"] is None and d["free_bytes_after"] is None
    assert list(ssd.iterdir()) == []


def test_plan_never_follows_a_symlink_at_the_caches_own_names(tmp_path, demo, run_cli):
    """Read-only still means symlink-safe: a planted link makes the plan an error (exit 2,
    one line), and neither the cache nor what the link points at is touched."""
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    paths = [str(p) for p in demo.stacks]
    cache = Cache(ssd, reserve_mb=0)
    cache.ensure(paths[:3])
    cache.index.close()
    root = ssd / "stacktools-cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.db"
    victim.write_bytes(b"not an index" * 100)
    for name in ("index.db", "index.db-wal", "pins"):
        p = root / name
        moved = tmp_path / f"real-{name}"
        if os.path.lexists(p):
            os.rename(p, moved)
        p.symlink_to(victim if name != "pins" else outside)
        before, outside_before = _tree(ssd), _tree(outside)
        r = _plan(run_cli, demo, ssd, "--json")
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert_one_line_error(r)
        assert _tree(ssd) == before and _tree(outside) == outside_before
        p.unlink()
        if os.path.lexists(moved):
            os.rename(moved, p)


def test_the_python_api_refuses_a_missing_ssd_path_too(tmp_path):
    # The same rule as the command line: a typo or an unmounted disk must not fill /.
    from stacktools.errors import CacheConfigError
    missing = tmp_path / "typo" / "ssd"
    with pytest.raises(CacheConfigError, match="does not exist") as err:
        Cache(missing, reserve_mb=0)
    assert "create=True" in str(err.value) and "--create" not in str(err.value)
    assert not missing.parent.exists()
    Cache(missing, reserve_mb=0, create=True)
    assert (missing / "stacktools-cache").is_dir()


def test_plan_shows_what_consolidating_and_shrinking_would_take(tmp_path, demo, run_cli):
    """Each choice's bytes, from headers read independently, and whether it fits the
    quota of an empty cache (which is then what the set may use)."""
    from tests import independent

    ssd = tmp_path / "ssd"
    ssd.mkdir()
    whole = sum(os.path.getsize(p) for p in demo.stacks)
    data = independent.read_cs(demo.selected_cs)
    per_stack: dict = {}
    for blob in data["blob/path"]:
        per_stack[blob] = per_stack.get(blob, 0) + 1
    heads = [(independent.header(independent.blob_file(demo.project_dir, b)), n) for b, n in per_stack.items()]

    def total(box, itemsize=None):
        return sum(1024 + n * box * box * (itemsize or h["dtype"].itemsize) for h, n in heads)

    selected = total(64)
    quota_bytes = (selected + total(64, 2)) // 2  # selected-only float16 fits, selected-only does not
    r = run_cli("cache", "plan", demo.selected_cs, "-p", demo.project_dir, "--ssd-path", ssd, "--reserve-mb", "0",
                "--quota-mb", quota_bytes / 1e6, "--json")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["usable_bytes"] == quota_bytes
    got = {(c["option"], c["bytes"], c["fits"]) for c in d["choices"]}
    assert got == {("whole stacks", whole, False), ("selected only", selected, False),
                   ("selected only, float16", total(64, 2), True),
                   ("selected only, Fourier-cropped to 32", total(32), True),
                   ("selected only, Fourier-cropped to 32, float16", total(32, 2), True)}
    table = run_cli("cache", "plan", demo.selected_cs, "-p", demo.project_dir, "--ssd-path", ssd,
                    "--reserve-mb", "0", "--quota-mb", quota_bytes / 1e6)
    text = "".join(ch for ch in table.stdout if not ch.isspace() and ch not in "│┃━╇─")  # cells wrap
    assert "Fourier-croppedto32,float16" in text and f"({quota_bytes:,}bytes)" in text
    assert f"({total(32, 2):,}bytes)yes" in text and f"({selected:,}bytes)no" in text
    assert list(ssd.iterdir()) == []
