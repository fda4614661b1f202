"""Placement: properties against the pure planner, and real caches on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacktools.cache import Cache, Entry, Inventory, SourceFile, plan_stacks
from stacktools.demo import make_demo_project
from stacktools.errors import CsFormatError, MissingStackError, NodesFileError, PlacementError
from stacktools.particles import ParticleSet
from stacktools.placement import (
    Node,
    QueuedSet,
    apply_plan,
    load_nodes,
    place_queue,
    place_set,
    queue_from_cs,
    queue_order,
    read_nodes_file,
    set_sources,
    simulate_queue,
)
from tests.helpers import assert_one_line_error

NOW = 10_000.0
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

UNIVERSE = [SourceFile(f"/src/P1/J5/s{i:02d}.mrc", size, 1_000 + i, f"/src/P1/J5/s{i:02d}.mrc")
            for i, size in enumerate([5, 40, 12, 80, 33, 7, 60, 25, 18, 90, 3, 50])]


@st.composite
def entries(draw) -> list[Entry]:
    out = []
    for s in draw(st.lists(st.sampled_from(UNIVERSE), unique=True, max_size=8)):
        stale = draw(st.booleans())  # a cached copy of an older version of the source
        out.append(Entry(s.key, s.size + (3 if stale else 0), s.mtime_ns - (1 if stale else 0),
                         last_access=draw(st.floats(0, NOW)), in_use=draw(st.booleans()),
                         owned=draw(st.booleans()), project="P1"))
    for i in range(draw(st.integers(0, 3))):  # entries of other projects
        out.append(Entry(f"/src/P9/J2/o{i}.mrc", draw(st.integers(1, 120)), 1,
                         last_access=draw(st.floats(0, NOW)), in_use=draw(st.booleans()),
                         owned=draw(st.booleans()), project="P9"))
    return out


@st.composite
def inventories(draw) -> Inventory:
    ents = draw(entries())
    reserved = ({"/src/P8/J1/busy.mrc": draw(st.integers(1, 50))} if draw(st.booleans()) else {})
    return Inventory(entries=ents,
                     quota_bytes=draw(st.one_of(st.none(), st.integers(0, 600))),
                     reserve_bytes=draw(st.integers(0, 150)),
                     free_bytes=draw(st.integers(0, 800)),
                     lifetime_s=draw(st.sampled_from([500.0, 1e9])),
                     taken_at=NOW, reserved=reserved, total_bytes=0)


@st.composite
def node_lists(draw) -> list[Node]:
    n = draw(st.integers(1, 4))
    return [Node(f"gpu{i:02d}", draw(inventories())) for i in draw(st.permutations(range(n)))]


sets_st = st.lists(st.lists(st.sampled_from(UNIVERSE), unique=True, min_size=1, max_size=6),
                   min_size=1, max_size=4).map(
    lambda ss: [QueuedSet(f"set{i}", s) for i, s in enumerate(ss)])


# -- properties ------------------------------------------------------------------------------


@PROPS
@given(nodes=node_lists(), sets=sets_st)
def test_place_set_picks_fewest_bytes_to_copy_where_it_fits(nodes, sets):
    qset = sets[0]
    plans = {n.name: plan_stacks(qset.stacks, n.inventory) for n in nodes}
    fitting = {k: p.bytes_to_copy for k, p in plans.items() if p.fits}
    before = [json.dumps(n.inventory.to_dict(), sort_keys=True) for n in nodes]
    p = place_set(qset, nodes)
    assert [json.dumps(n.inventory.to_dict(), sort_keys=True) for n in nodes] == before  # untouched
    if not fitting:
        assert p.node is None and "fits on no node" in p.reason
        return
    assert p.node in fitting
    assert fitting[p.node] == min(fitting.values())
    assert p.chosen.bytes_to_copy == fitting[p.node]
    # Deterministic: the same nodes in another order give the same answer.
    assert place_set(qset, list(reversed(nodes))).node == p.node


def _removed(c) -> list[Entry]:
    return c.plan.expire + c.plan.evict + c.plan.replace


@PROPS
@given(nodes=node_lists(), sets=sets_st, biggest=st.booleans())
def test_queue_never_over_commits_nor_evicts_protected_entries(nodes, sets, biggest):
    qp = place_queue(sets, nodes, order="biggest" if biggest else "given")
    assert sorted(p.position for p in qp.placements) == list(range(len(sets)))
    for node in nodes:
        inv = node.inventory
        original = {e.key: e for e in inv.entries}
        placed = [p for p in qp.placements if p.node == node.name]
        if not placed:
            continue
        copied, removed_size, removed_keys = 0, 0, []
        earlier_stacks: set[str] = set()
        for p in placed:
            for e in _removed(p.chosen):
                # Only entries of the original snapshot that the cache owns and no one uses...
                assert e.key in original
                assert original[e.key].owned and not original[e.key].in_use
                # ...and never a stack that an earlier set of the queue placed here needs.
                assert e.key not in earlier_stacks
                assert e.key not in removed_keys
                removed_keys.append(e.key)
                removed_size += original[e.key].size
            copied += p.chosen.bytes_to_copy
            earlier_stacks |= {s.key for s in sets[p.position].stacks}
        reserved = sum(inv.reserved.values())
        used_after = inv.owned_bytes - removed_size + copied
        free_after = inv.free_bytes + removed_size - copied
        if copied:  # sets found wholly cached write nothing and need no room
            if inv.quota_bytes is not None:
                assert used_after + reserved <= inv.quota_bytes
            assert free_after - reserved >= inv.reserve_bytes
        # Every placed set is wholly present on the node at the end.
        final = {e.key: e for e in qp.inventories[node.name].entries}
        for p in placed:
            for s in sets[p.position].stacks:
                assert s.key in final and final[s.key].size == s.size and final[s.key].in_use
        usage = next(u for u in qp.nodes if u.node == node.name)
        assert usage.used_bytes_after == used_after and usage.free_bytes_after == free_after


@PROPS
@given(inv=inventories(), sets=sets_st, hold=st.booleans())
def test_simulated_queue_stays_within_quota_and_reserve(inv, sets, hold):
    steps = simulate_queue(sets, inv, hold=hold)
    assert [s.label for s in steps] == [q.label for q in sets]
    reserved = sum(inv.reserved.values())
    prev_used = inv.owned_bytes
    for s in steps:
        if s.fits and s.bytes_to_copy:
            if s.quota_bytes is not None:
                assert s.used_bytes + reserved <= s.quota_bytes
            assert s.free_bytes - reserved >= s.reserve_bytes
        else:
            assert s.used_bytes == prev_used and s.bytes_to_copy == 0  # nothing changes
        prev_used = s.used_bytes
        for e in s.plan.expire + s.plan.evict:
            assert e.owned and not e.in_use


# -- examples: pure ---------------------------------------------------------------------------


def _inv(free: int, quota: int | None = None, reserve: int = 0, entries=()) -> Inventory:
    return Inventory(entries=list(entries), quota_bytes=quota, reserve_bytes=reserve,
                     free_bytes=free, lifetime_s=1e9, taken_at=NOW)


def test_queue_never_puts_two_sets_on_a_node_that_cannot_hold_both():
    a, b = UNIVERSE[1], UNIVERSE[3]  # 40 and 80 bytes
    nodes = [Node("big", _inv(1000, quota=100)), Node("small", _inv(1000, quota=90))]
    qp = place_queue([QueuedSet("A", [a]), QueuedSet("B", [b])], nodes)
    # Alone, each would go to "big" (more room); together they cannot both.
    assert [p.node for p in qp.placements] == ["big", "small"]
    qp = place_queue([QueuedSet("A", [a]), QueuedSet("B", [b])], nodes, order="biggest")
    assert [(p.label, p.node) for p in qp.placements] == [("B", "big"), ("A", "small")]


def test_queue_reuses_what_an_earlier_set_copied():
    s = UNIVERSE[:3]
    nodes = [Node("n1", _inv(1000)), Node("n2", _inv(1000))]
    qp = place_queue([QueuedSet("A", s), QueuedSet("B", s[:2])], nodes)
    assert [p.node for p in qp.placements] == ["n1", "n1"]
    assert qp.placements[1].chosen.bytes_to_copy == 0


def test_ties_go_to_more_room_then_name():
    s = [UNIVERSE[0]]
    p = place_set(QueuedSet("A", s), [Node("b", _inv(100)), Node("a", _inv(100)), Node("c", _inv(200))])
    assert p.node == "c" and "more room" in p.reason
    p = place_set(QueuedSet("A", s), [Node("b", _inv(100)), Node("a", _inv(100))])
    assert p.node == "a" and "first by name" in p.reason


def test_explains_evictions_and_misfits():
    old = Entry("/src/old.mrc", 50, 1, last_access=1.0)
    p = place_set(QueuedSet("A", [UNIVERSE[1]]), [Node("n", _inv(1000, quota=60, entries=[old])),
                                                  Node("m", _inv(10))])
    assert p.node == "n"
    n = next(c for c in p.candidates if c.node == "n")
    assert [e.key for e in n.evict] == ["/src/old.mrc"] and "evicts 1" in n.reason
    m = next(c for c in p.candidates if c.node == "m")
    assert not m.fits and "does not fit" in m.reason and m.shortfall_bytes == 30
    d = p.to_dict()
    assert d["node"] == "n" and d["candidates"][0]["evict"][0]["key"] == "/src/old.mrc"
    none = place_set(QueuedSet("B", [UNIVERSE[9]]), [Node("m", _inv(10))])
    assert none.node is None and "m: short by" in none.reason


def test_apply_plan_and_order_errors():
    inv = _inv(100)
    plan = plan_stacks([UNIVERSE[0]], inv)
    after = apply_plan(inv, plan)
    assert inv.entries == [] and after.free_bytes == 95 and after.entries[0].in_use
    assert not apply_plan(inv, plan, hold=False).entries[0].in_use
    with pytest.raises(PlacementError):
        apply_plan(inv, plan_stacks([UNIVERSE[9]], _inv(10)))
    with pytest.raises(PlacementError):
        queue_order([], "smallest")
    with pytest.raises(PlacementError):
        place_set(QueuedSet("A", [UNIVERSE[0]]), [])


def test_sequential_jobs_evict_earlier_jobs_but_concurrent_ones_cannot():
    a, b = [UNIVERSE[1]], [UNIVERSE[3]]  # 40, 80
    inv = _inv(1000, quota=100)
    seq = simulate_queue([QueuedSet("A", a), QueuedSet("B", b)], inv, hold=False)
    assert [s.fits for s in seq] == [True, True] and seq[1].bytes_removed == 40
    par = simulate_queue([QueuedSet("A", a), QueuedSet("B", b)], inv, hold=True)
    assert [s.fits for s in par] == [True, False] and par[1].used_bytes == 40


# -- real caches on disk ------------------------------------------------------------------------


def _write_nodes(path: Path, nodes: list[dict]) -> Path:
    lines = []
    for n in nodes:
        lines.append("[[node]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in n.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def two_nodes(demo, tmp_path):
    """ssd-a warmed by a real sync of the Select 2D subset; ssd-b has no cache at all."""
    a, b = tmp_path / "ssd-a", tmp_path / "ssd-b"
    a.mkdir()
    b.mkdir()
    pset = ParticleSet.open(demo.selected_cs, demo.project_dir)
    Cache(a, reserve_mb=0).ensure(pset)
    nodes = _write_nodes(tmp_path / "nodes.toml", [
        {"name": "gpu-b", "quota_mb": 1000, "reserve_mb": 0, "ssd_path": "ssd-b"},
        {"name": "gpu-a", "quota_mb": 1000, "reserve_mb": 0, "ssd_path": str(a)}])
    return demo, pset, a, b, nodes


def test_real_caches_warm_node_is_chosen_and_nothing_created(two_nodes):
    demo, pset, a, b, nodes_file = two_nodes
    nodes = load_nodes(nodes_file)
    assert os.listdir(b) == []  # no cache made on the cold node
    p = place_set(QueuedSet.from_particles(pset), nodes)
    assert p.node == "gpu-a" and p.chosen.bytes_to_copy == 0
    cold = next(c for c in p.candidates if c.node == "gpu-b")
    assert cold.bytes_to_copy == sum(os.path.getsize(s) for s in pset.stack_paths)
    assert nodes[0].inventory.quota_bytes == 1000 * 10**6


def test_queue_from_cs_opens_each_set_labelled_by_its_path(demo, tmp_path):
    sets = queue_from_cs([demo.selected_cs, demo.extracted_cs], demo.project_dir)
    assert [q.label for q in sets] == [str(demo.selected_cs), str(demo.extracted_cs)]
    pset = ParticleSet.open(demo.selected_cs, demo.project_dir)
    assert sets[0].stacks == set_sources(pset.stack_paths)
    assert sets[0].bytes == sum(os.path.getsize(s) for s in pset.stack_paths)
    with pytest.raises(CsFormatError):
        queue_from_cs([tmp_path / "absent.cs"], demo.project_dir)
    with pytest.raises(MissingStackError):
        set_sources([tmp_path / "absent.mrc"])


def test_real_inventory_snapshot_from_status(two_nodes, run_cli, tmp_path):
    demo, pset, a, b, _ = two_nodes
    res = run_cli("cache", "status", "--ssd-path", a, "--json", "--inventory", check=True)
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "gpu-a.json").write_text(res.stdout)
    nodes_file = _write_nodes(tmp_path / "nodes.json.toml", [
        {"name": "gpu-a", "quota_mb": 1000, "reserve_mb": 0, "inventory": "snap/gpu-a.json"},
        {"name": "gpu-b", "quota_mb": 1000, "reserve_mb": 0, "ssd_path": str(b)}])
    p = place_set(QueuedSet.from_particles(pset), load_nodes(nodes_file))
    assert p.node == "gpu-a" and p.chosen.bytes_to_copy == 0


def test_real_queue_sends_second_project_elsewhere_when_quota_is_tight(two_nodes, tmp_path):
    demo, pset, a, b, _ = two_nodes
    other = make_demo_project(tmp_path / "P2", seed=7)
    pset2 = ParticleSet.open(other.selected_cs, other.project_dir)
    size1 = sum(os.path.getsize(s) for s in pset.stack_paths)
    size2 = sum(os.path.getsize(s) for s in pset2.stack_paths)
    quota_mb = (max(size1, size2) + min(size1, size2) // 2) / 1e6  # one set, not two
    nodes_file = _write_nodes(tmp_path / "tight.toml", [
        {"name": "gpu-a", "quota_mb": quota_mb, "reserve_mb": 0, "ssd_path": str(a)},
        {"name": "gpu-b", "quota_mb": quota_mb, "reserve_mb": 0, "ssd_path": str(b)}])
    qp = place_queue([QueuedSet.from_particles(pset), QueuedSet.from_particles(pset2)],
                     load_nodes(nodes_file))
    assert [p.node for p in qp.placements] == ["gpu-a", "gpu-b"]
    a_cand = next(c for c in qp.placements[1].candidates if c.node == "gpu-a")
    assert not a_cand.fits  # the first set is in use there now


def test_cli_place_json_and_table(two_nodes, run_cli, tmp_path):
    demo, pset, a, b, nodes_file = two_nodes
    res = run_cli("cache", "place", nodes_file, demo.selected_cs, demo.extracted_cs,
                  "--project-dir", demo.project_dir, "--json", check=True)
    d = json.loads(res.stdout)
    assert [p["node"] for p in d["placements"]] == ["gpu-a", "gpu-a"]
    assert d["placements"][0]["bytes_to_copy"] == 0 and d["unplaced"] == []
    assert {n["node"] for n in d["nodes"]} == {"gpu-a", "gpu-b"}
    assert os.listdir(b) == []
    res = run_cli("cache", "place", nodes_file, demo.selected_cs, "--project-dir", demo.project_dir,
                  check=True)
    assert "gpu-a" in res.stdout and "fewest bytes to copy" in res.stdout


@pytest.mark.parametrize("node, fragment", [
    ({"name": "x", "quota_mb": 1, "ssd_path": "."}, "missing reserve_mb"),
    ({"name": "x", "quota_mb": 1, "reserve_mb": 0, "ssd_path": ".", "quota": 3}, "unknown key 'quota'"),
    ({"name": "x", "quota_mb": 1, "reserve_mb": 0}, "exactly one of ssd_path and inventory"),
    ({"name": "x", "quota_mb": "lots", "reserve_mb": 0, "ssd_path": "."}, "quota_mb must be a number"),
    ({"name": "x", "quota_mb": 1, "reserve_mb": 0, "inventory": "nope.json"}, "cannot read inventory"),
    ({"name": "x", "quota_mb": 1, "reserve_mb": 0, "ssd_path": "no-such-dir"}, "is not a directory"),
])
def test_cli_bad_nodes_file_is_one_line(demo, run_cli, tmp_path, node, fragment):
    nodes_file = _write_nodes(tmp_path / "nodes.toml", [node])
    res = run_cli("cache", "place", nodes_file, demo.selected_cs, "--project-dir", demo.project_dir)
    assert res.returncode == 2
    assert_one_line_error(res, fragment)


def test_nodes_file_forms(tmp_path):
    (tmp_path / "inv.json").write_text("{not json")
    bad_inv = tmp_path / "n.json"
    bad_inv.write_text(json.dumps({"nodes": [{"name": "x", "quota_mb": 1, "reserve_mb": 0,
                                              "inventory": "inv.json"}]}))
    assert read_nodes_file(bad_inv)[0].inventory == str(tmp_path / "inv.json")
    with pytest.raises(NodesFileError, match="not valid JSON"):
        load_nodes(bad_inv)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"name": "x", "quota_mb": 1, "reserve_mb": 0, "ssd_path": "."},
                                  {"name": "x", "quota_mb": 1, "reserve_mb": 0, "ssd_path": "."}]))
    with pytest.raises(NodesFileError, match="duplicate name 'x'"):
        read_nodes_file(listed)
    (tmp_path / "e.toml").write_text("[cache]\nssd_path='.'\n")
    with pytest.raises(NodesFileError, match="unknown top-level key 'cache'"):
        read_nodes_file(tmp_path / "e.toml")
    with pytest.raises(NodesFileError, match="cannot read nodes file"):
        read_nodes_file(tmp_path / "absent.toml")


def test_cli_set_that_fits_nowhere_exits_1(demo, run_cli, tmp_path):
    (tmp_path / "ssd").mkdir()
    nodes_file = _write_nodes(tmp_path / "nodes.toml", [
        {"name": "tiny", "quota_mb": 0.001, "reserve_mb": 0, "ssd_path": "ssd"}])
    res = run_cli("cache", "place", nodes_file, demo.selected_cs, "--project-dir", demo.project_dir, "--json")
    assert res.returncode == 1
    d = json.loads(res.stdout)
    assert d["unplaced"] == [str(demo.selected_cs)] and d["placements"][0]["node"] is None
    assert d["placements"][0]["candidates"][0]["limited_by"] == "quota"
