"""Planning against inventory snapshots: properties of the pure planner."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from stacktools.cache import Entry, Inventory, SourceFile, plan_stacks

NOW = 1_800_000_000.0
DAY = 86400.0


@st.composite
def scenario(draw):
    n = draw(st.integers(0, 12))
    entries = []
    for i in range(n):
        entries.append(Entry(key=f"/data/e{i}.mrc", size=draw(st.integers(1, 1000)),
                             mtime_ns=i, last_access=NOW - draw(st.floats(0, 60)) * DAY,
                             in_use=draw(st.booleans()), owned=draw(st.booleans())))
    owned = sum(e.size for e in entries if e.owned)
    reserved = {f"/data/r{i}.mrc": draw(st.integers(1, 300)) for i in range(draw(st.integers(0, 2)))}
    inv = Inventory(entries=entries,
                    quota_bytes=draw(st.one_of(st.none(), st.integers(0, 8000))),
                    reserve_bytes=draw(st.integers(0, 2000)),
                    free_bytes=draw(st.integers(0, 10000)),
                    lifetime_s=30 * DAY, taken_at=NOW, reserved=reserved)
    stacks = []
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["new", "cached", "stale", "reserved"]))
        if kind in ("cached", "stale") and entries:
            e = draw(st.sampled_from(entries))
            stacks.append(SourceFile(e.key, e.size, e.mtime_ns + (kind == "stale"), e.key))
        elif kind == "reserved" and reserved:
            k = draw(st.sampled_from(sorted(reserved)))
            stacks.append(SourceFile(k, reserved[k], 0, k))
        else:
            stacks.append(SourceFile(f"/data/s{i}.mrc", draw(st.integers(1, 2000)), 0, f"/data/s{i}.mrc"))
    return inv, stacks, owned


@settings(max_examples=50, deadline=None)
@given(scenario(), st.booleans())
def test_plan_respects_quota_and_reserve(sc, partial):
    inv, stacks, _ = sc
    plan = plan_stacks(stacks, inv, partial=partial)
    if not plan.fits or not plan.to_copy:
        return
    reserved = sum(inv.reserved.values())
    if inv.quota_bytes is not None:
        assert plan.used_bytes_after + reserved <= inv.quota_bytes
    assert plan.free_bytes_after - reserved >= inv.reserve_bytes


@settings(max_examples=50, deadline=None)
@given(scenario(), st.booleans())
def test_plan_never_evicts_in_use_or_foreign(sc, partial):
    inv, stacks, _ = sc
    plan = plan_stacks(stacks, inv, partial=partial)
    keys = {s.key for s in stacks}
    for e in plan.expire + plan.evict + plan.replace:
        assert e.owned and not e.in_use
    for e in plan.expire + plan.evict:
        assert e.key not in keys
    # Expired first, then least recently used first.
    assert [e.last_access for e in plan.evict] == sorted(e.last_access for e in plan.evict)
    assert all(NOW - e.last_access > inv.lifetime_s for e in plan.expire)


@settings(max_examples=40, deadline=None)
@given(scenario())
def test_partial_keeps_set_order_and_whole_plan_agrees(sc):
    inv, stacks, _ = sc
    whole = plan_stacks(stacks, inv)
    part = plan_stacks(stacks, inv, partial=True)
    assert part.fits
    if whole.fits:
        assert part.decisions() == whole.decisions()
    order = [s.key for s in stacks]
    idx = [order.index(s.key) for s in part.to_copy]
    assert idx == sorted(idx)
    assert {s.key for s in part.to_copy} | {s.key for s in part.from_source} == \
        {s.key for s in whole.to_copy}


@settings(max_examples=25, deadline=None)
@given(scenario())
def test_snapshot_round_trips_through_json(sc):
    inv, stacks, _ = sc
    again = Inventory.from_dict(json.loads(json.dumps(inv.to_dict())))
    assert plan_stacks(stacks, again).decisions() == plan_stacks(stacks, inv).decisions()


def test_warm_plan_copies_nothing():
    e = Entry("/d/a.mrc", 100, 7, NOW)
    inv = Inventory([e], quota_bytes=100, reserve_bytes=0, free_bytes=0, lifetime_s=DAY, taken_at=NOW)
    plan = plan_stacks([SourceFile("/d/a.mrc", 100, 7)], inv)
    assert plan.fits and plan.bytes_to_copy == 0 and plan.evict == [] and plan.expire == []


def test_changed_source_replaces_its_entry():
    e = Entry("/d/a.mrc", 100, 7, NOW)
    inv = Inventory([e], quota_bytes=150, reserve_bytes=0, free_bytes=10**6, lifetime_s=DAY,
                    taken_at=NOW)
    plan = plan_stacks([SourceFile("/d/a.mrc", 120, 8)], inv)
    assert plan.fits and plan.files_to_copy == 1 and [r.key for r in plan.replace] == ["/d/a.mrc"]


# -- the live cache executes its plans exactly -----------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from stacktools.cache import Cache  # noqa: E402
from stacktools.errors import CacheFullError  # noqa: E402


@pytest.fixture(scope="module")
def stacks12(tmp_path_factory):
    from stacktools.demo import make_demo_project
    made = make_demo_project(tmp_path_factory.mktemp("plan") / "P1", micrographs=12,
                             particles_per_micrograph=(5, 30), box=32)
    return [str(p) for p in made.stacks]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_live_sync_does_what_its_plan_says(stacks12, data):
    sizes = {p: os.path.getsize(p) for p in stacks12}
    quota = data.draw(st.integers(0, sum(sizes.values())), label="quota")
    ssd = Path(tempfile.mkdtemp(prefix="plan-ssd-"))
    try:
        for _ in range(data.draw(st.integers(1, 4), label="rounds")):
            subset = data.draw(st.lists(st.sampled_from(stacks12), min_size=1, max_size=8,
                                        unique=True), label="set")
            partial = data.draw(st.booleans(), label="partial")
            cache = Cache(ssd, quota_mb=quota / 1e6, reserve_mb=0)
            plan = cache.plan(subset, partial=partial)
            if not plan.fits:
                with pytest.raises(CacheFullError):
                    cache.execute(plan)
                continue
            res = cache.execute(plan)
            assert not res.replanned
            assert res.bytes_copied == plan.bytes_to_copy and res.copied == plan.files_to_copy
            assert res.evicted == len(plan.evict) and res.expired == len(plan.expire)
            status = cache.status()
            assert status["bytes"] <= quota or plan.bytes_to_copy == 0
            assert Cache(ssd, quota_mb=quota / 1e6, reserve_mb=0).plan(
                [s.path for s in plan.to_copy] + [s.path for s in plan.cached]).bytes_to_copy == 0
    finally:
        shutil.rmtree(ssd, ignore_errors=True)


def test_plan_against_exported_snapshot_matches_live_plan(stacks12, tmp_path):
    from stacktools.cache import plan_for_inventory
    from tests.helpers import cli_json
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    sizes = [os.path.getsize(p) for p in stacks12]
    cache = Cache(ssd, quota_mb=sum(sizes[:8]) / 1e6, reserve_mb=0)
    cache.ensure(stacks12[:6])
    snap = cli_json("cache", "status", "--ssd-path", ssd, "--quota-mb", str(sum(sizes[:8]) / 1e6),
                    "--reserve-mb", "0", "--inventory")["inventory"]
    remote = plan_for_inventory(stacks12[3:], snap)
    live = cache.plan(stacks12[3:])
    assert remote.decisions() == live.decisions()
    assert remote.bytes_to_copy == live.bytes_to_copy == sum(sizes[6:])
    assert [e.key for e in remote.evict] == [e.key for e in live.evict]
