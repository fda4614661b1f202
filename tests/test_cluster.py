"""consolidate, check, verify and cache prestage on a Dask cluster (stacktools[dask]).

A LocalCluster of two single-threaded worker processes stands in for a cluster;
every result is compared with a local run of the same plan, byte for byte.
Workers are slowed (a sleep before each stack's pixels, patched into the worker
processes only) where a kill must land mid-stack.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from stacktools import api  # noqa: E402
from stacktools.demo import make_demo_project  # noqa: E402
from stacktools.errors import ClusterError  # noqa: E402
from tests.helpers import PY, invoke_cli, same_stack  # noqa: E402
from tests.independent import assert_same_particles, header, read_cs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TMP_SUFFIX = ".stacktools-tmp"


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


# --- slow writes, in the worker processes ------------------------------------------------

def slow_writes(delay: float, marks: str) -> None:
    """In a worker: before each stack's pixels, note (pid, temporary file) in ``marks`` and sleep."""
    import stacktools.consolidate.run as run

    real = getattr(run, "_real_copy_to_file", run.copy_to_file)
    run._real_copy_to_file = real

    def slow(fd, *args, **kw):
        mark = Path(marks, f"{os.getpid()}-{time.monotonic_ns()}")
        tmp = os.readlink(f"/proc/self/fd/{fd}")
        mark.with_suffix(".part").write_text(json.dumps({"pid": os.getpid(), "tmp": tmp}))
        os.rename(mark.with_suffix(".part"), mark)  # whole when the test reads it
        time.sleep(delay)
        return real(fd, *args, **kw)
    run.copy_to_file = slow


def failing_writes(name: str) -> None:
    """In a worker: the stack whose name starts with ``name`` hits a full disk; the others are slowed."""
    import stacktools.consolidate.run as run

    real = getattr(run, "_real_copy_to_file", run.copy_to_file)
    run._real_copy_to_file = real

    def full(fd, *args, **kw):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith("." + name):
            raise OSError(errno.ENOSPC, "No space left on device")
        time.sleep(0.2)
        return real(fd, *args, **kw)
    run.copy_to_file = full


def fast_writes() -> None:
    import stacktools.consolidate.run as run
    run.copy_to_file = getattr(run, "_real_copy_to_file", run.copy_to_file)


def final_of(tmp: str) -> Path:
    """The final name of a stack's temporary (``.NAME.<random>.stacktools-tmp``)."""
    p = Path(tmp)
    return p.with_name(p.name[1:].rsplit(".", 2)[0])


def cli(*args, check: bool = False):
    """The command, in this process (distributed is imported already) through the real entry point."""
    res = invoke_cli(*args)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# --- comparing outputs -------------------------------------------------------------------

def tree(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (hidden ones too): relative path -> bytes; a .csg without its
    ``created:`` time, the one line two runs cannot share."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".csg":
                data = b"\n".join(ln for ln in data.split(b"\n") if not ln.startswith(b"created:"))
            out[str(p.relative_to(d))] = data
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name] == tb[name], f"{name} differs"


def local_reference(sel: Path, out: Path, ref: Path, **kw) -> None:
    """A local run of the plan into ``out``, moved to ``ref`` (same OUTDIR: same blob/paths)."""
    api.consolidate_particles(sel, out, **kw)
    shutil.move(out, ref)


# --- consolidation -----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["per-stack", "packed"])
def test_consolidation_is_byte_identical_to_a_local_run(client, tmp_path, layout):
    # float16 sources: mixed with float32 per stack; packed stacks need one mode, so all float16.
    demo = make_demo_project(tmp_path / "P1", float16_every=4 if layout == "per-stack" else 1, seed=3)
    kinds = {header(s)["dtype"].str[1:] for s in demo.stacks}
    assert kinds == ({"f2", "f4"} if layout == "per-stack" else {"f2"})
    out, ref = demo.project_dir / "out", tmp_path / "ref"
    kw = {"layout": layout, **({"particles_per_stack": 40} if layout == "packed" else {})}
    local_reference(demo.selected_cs, out, ref, **kw)
    seen = []
    res = api.consolidate_particles(demo.selected_cs, out, client=client, progress=seen.append, **kw)
    assert res.stacks > 2 and res.stacks_resumed == 0
    assert sum(seen) == res.bytes_written  # every byte reached the client's bar, once
    assert_same_tree(ref, out)
    assert_same_particles(res.cs, demo.project_dir, demo.selected_cs, demo.project_dir)


def test_a_worker_killed_mid_stack_is_replaced_and_the_result_is_the_same(client, tmp_path):
    demo = make_demo_project(tmp_path / "P1", seed=4)
    out, ref, marks = demo.project_dir / "out", tmp_path / "ref", tmp_path / "marks"
    marks.mkdir()
    local_reference(demo.selected_cs, out, ref)
    pids = set(client.run(os.getpid).values())
    client.run(slow_writes, 0.4, str(marks))
    try:
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(res=api.consolidate_particles(
            demo.selected_cs, out, client=client)))
        t.start()
        mark = json.loads(wait_for(lambda: next(iter(sorted(marks.glob("*[0-9]"))), None), what="a stack").read_text())
        # Mid-stack: its temporary is there, its final name not yet.
        assert os.path.exists(mark["tmp"]) and not final_of(mark["tmp"]).exists()
        os.kill(mark["pid"], signal.SIGKILL)
        t.join(120)
        assert not t.is_alive()
    finally:
        client.run(fast_writes)
    assert "res" in box, "the run failed"
    assert mark["pid"] in pids
    new_pids = set(wait_for(lambda: len(client.run(os.getpid)) == 2 and client.run(os.getpid),
                            what="the Nanny's new worker").values())
    assert mark["pid"] not in new_pids  # the Nanny started a new worker in its place
    assert_same_tree(ref, out)  # the killed worker's temporary is gone too
    assert not [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX)]


def test_a_task_error_stops_the_run_and_leaves_nothing_under_a_final_name(client, tmp_path):
    from stacktools.errors import DiskFullError

    demo = make_demo_project(tmp_path / "P1", seed=12)
    out = demo.project_dir / "out"
    plan = api.plan_consolidation(demo.selected_cs, out)
    victim = plan.stacks[len(plan.stacks) // 2].path.name
    client.run(failing_writes, victim)
    try:
        with pytest.raises(DiskFullError, match=victim):
            api.consolidate_particles(demo.selected_cs, out, client=client)
    finally:
        client.run(fast_writes)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_a_float16_overflow_on_a_worker_names_its_row(client, tmp_path):
    from stacktools.errors import Float16RangeError
    from tests.independent import blob_file
    from tests.test_consolidate_shrink import _overwrite_particle

    demo = make_demo_project(tmp_path / "P1", seed=13)
    data = read_cs(demo.selected_cs)
    row = next(r for r in range(3, len(data))
               if header(blob_file(demo.project_dir, data["blob/path"][r]))["dtype"].itemsize == 4)
    path = blob_file(demo.project_dir, data["blob/path"][row])
    idx = int(data["blob/idx"][row])
    _overwrite_particle(path, idx, 1e6)
    out = demo.project_dir / "out"
    with pytest.raises(Float16RangeError) as caught:
        api.consolidate_particles(demo.selected_cs, out, client=client, dtype="float16")
    assert f"{demo.selected_cs} row {row}:" in str(caught.value)
    assert f"{path}: particle {idx}:" in str(caught.value)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.suffix in (".mrc", ".cs")]


def test_verify_of_a_shrunk_set_on_the_cluster_passes_as_locally(client, tmp_path):
    demo = make_demo_project(tmp_path / "P1", seed=14)
    box = int(read_cs(demo.selected_cs)["blob/shape"][0][0])
    out, ref = demo.project_dir / "out", tmp_path / "ref"
    kw = {"crop": box - 2, "fourier_crop": (box // 2) & ~1, "verify": True}
    local_reference(demo.selected_cs, out, ref, **kw)
    api.consolidate_particles(demo.selected_cs, out, client=client, **kw)
    assert_same_tree(out, ref)
    # stacktools verify on the cluster learns the shrink from the manifest, and finds a flipped bit
    new_cs = next(out.glob("*_consolidated.cs"))
    assert api.verify_consolidated(new_cs, demo.selected_cs, client=client).ok
    stack = next((out / "stacks").iterdir())
    with open(stack, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 1]))
    result = api.verify_consolidated(new_cs, demo.selected_cs, client=client)
    assert result.particle_mismatches == 1 and str(stack) in result.problems[0]


def report_from_a_pool(item: int, report) -> int:
    """A task whose progress comes from its own threads, past a report interval (as a cache sync's)."""
    errors = []

    def work():
        try:
            for _ in range(4):
                time.sleep(0.15)
                report(item)
        except Exception as err:  # raised again in the task, as a pool's future would
            errors.append(err)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return item


def test_progress_reported_from_a_task_s_own_threads_reaches_the_client(client):
    from stacktools.cluster.tasks import run_tasks

    seen: list[int] = []
    out = run_tasks(client, report_from_a_pool, [5, 7], label="test", what=str, progress=seen.append,
                    sizes=[20, 28])
    assert out == [5, 7]
    assert sum(seen) == 48  # each task's bytes once: the reports mid-task, the rest at its end


KILLED_CLIENT = r"""
import sys
import distributed
from stacktools import api
from tests.test_cluster import slow_writes
if __name__ == "__main__":
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        client.run(slow_writes, 0.3, sys.argv[3])
        api.consolidate_particles(sys.argv[1], sys.argv[2], client=client)
    print("finished")
"""


def test_a_killed_client_is_resumed_by_rerunning_the_command(client, tmp_path):
    demo = make_demo_project(tmp_path / "P1", seed=5)
    out, ref, marks = demo.project_dir / "out", tmp_path / "ref", tmp_path / "marks"
    marks.mkdir()
    local_reference(demo.selected_cs, out, ref)
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT)
    p = subprocess.Popen([PY, str(script), str(demo.selected_cs), str(out), str(marks)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def mid_run():
            done = [s for s in (out / "stacks").glob("*.mrc")] if (out / "stacks").is_dir() else []
            writing = [json.loads(m.read_text())["tmp"] for m in marks.glob("*[0-9]")]
            writing = [w for w in writing if os.path.exists(w)]
            return done and writing
        wait_for(mid_run, 120, "a stack written and another being written")
        os.killpg(p.pid, signal.SIGKILL)  # the client, its scheduler and its workers
        stdout, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert b"finished" not in stdout
    assert not list(out.glob("*.cs")), "killed before the .cs"
    kept = len(list((out / "stacks").glob("*.mrc")))
    assert 0 < kept < len(list(ref.glob("stacks/*.mrc")))
    res = cli("consolidate", demo.selected_cs, "-o", out, "--dask", client.scheduler.address, "--json",
                  check=True)
    assert res.stdout.strip(), res.stderr
    doc = json.loads(res.stdout)
    assert doc["stacks_resumed"] >= kept - 1  # the kill may cut one rename short of its manifest check
    assert doc["stacks_resumed"] > 0
    assert_same_tree(ref, out)


# --- check and verify --------------------------------------------------------------------

def _poison(stack: Path, index: int) -> None:
    """Write NaN over one particle of a (test-owned) stack."""
    h = header(stack)
    n = h["nx"] * h["ny"]
    fd = os.open(stack, os.O_WRONLY)
    try:
        os.pwrite(fd, np.full(n, np.nan, h["dtype"]).tobytes(), h["offset"] + index * n * h["dtype"].itemsize)
    finally:
        os.close(fd)


def test_check_and_verify_on_the_cluster_report_what_a_local_run_reports(client, tmp_path):
    demo = make_demo_project(tmp_path / "P1", seed=6)
    address = client.scheduler.address
    rows = read_cs(demo.selected_cs)
    _poison(demo.project_dir / rows[3]["blob/path"].decode(), int(rows[3]["blob/idx"]))
    local = json.loads(cli("check", demo.selected_cs, "--outliers", "3", "--json").stdout)
    dask = cli("check", demo.selected_cs, "--outliers", "3", "--json", "--dask", address)
    assert dask.returncode == 1, dask.stderr
    assert json.loads(dask.stdout) == local
    assert local["counts"]["nan"] == 1 and local["stacks"] > 2

    res = api.consolidate_particles(demo.selected_cs, demo.project_dir / "out", client=client)
    args = ("verify", res.cs, "--against", demo.selected_cs, "--json")
    assert json.loads(cli(*args, "--dask", address, check=True).stdout)["ok"]
    new = read_cs(res.cs)
    _poison(demo.project_dir / new[7]["blob/path"].decode(), int(new[7]["blob/idx"]))
    local_v = cli(*args)
    dask_v = cli(*args, "--dask", address)
    assert local_v.returncode == dask_v.returncode == 1
    assert json.loads(dask_v.stdout) == json.loads(local_v.stdout)
    assert json.loads(dask_v.stdout)["particle_mismatches"] == 1


def test_a_bad_address_is_one_line_and_exit_2(tmp_path):
    demo = make_demo_project(tmp_path / "P1", micrographs=2, seed=7)
    res = cli("check", demo.selected_cs, "--dask", "local:zero")
    assert res.returncode == 2 and "local:N" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("check", demo.selected_cs, "--dask", str(tmp_path / "missing-scheduler.json"))
    assert res.returncode == 2 and "scheduler file" in res.stderr


# --- prestage ----------------------------------------------------------------------------

@contextlib.contextmanager
def node_cluster(root: Path, options):
    """A client of two Nanny workers posing as nodes gpu01 and gpu02, each with its
    own SSD directory; ``options(node, ssd)`` adds to each worker's options."""
    ssd = {n: root / f"ssd-{n}" for n in ("gpu01", "gpu02")}
    workers = {}
    for n, d in ssd.items():
        d.mkdir()
        workers[n] = {"cls": distributed.Nanny, "options": {"nthreads": 1, **options(n, d)}}
    with distributed.SpecCluster(scheduler={"cls": distributed.Scheduler, "options": {"dashboard_address": None}},
                                 workers=workers, silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c, ssd


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Two workers that are two nodes: each with its own $STACKTOOLS_NODE and SSD directory."""
    with node_cluster(tmp_path_factory.mktemp("nodes"),
                      lambda n, d: {"env": {"STACKTOOLS_NODE": n, "STACKTOOLS_SSD_PATH": str(d)}}) as got:
        yield got


def nodes_file(path: Path, nodes: dict[str, Path], quota_mb: float) -> Path:
    path.write_text("".join(f'[[node]]\nname = "{n}"\nquota_mb = {quota_mb}\nreserve_mb = 0\nssd_path = "{d}"\n\n'
                            for n, d in nodes.items()))
    return path


def cached_copy(ssd: Path, source: Path) -> Path:
    return ssd / "stacktools-cache" / "files" / str(source.resolve()).lstrip("/")


def pins(ssd: Path) -> list[Path]:
    return list((ssd / "stacktools-cache" / "pins").glob("*.pin"))


def test_prestage_puts_each_set_on_the_node_placement_chose(two_nodes, tmp_path):
    client, ssd = two_nodes
    a = make_demo_project(tmp_path / "A" / "P1", seed=8)
    b = make_demo_project(tmp_path / "B" / "P1", seed=9)
    size = sum(os.path.getsize(s) for s in a.stacks)
    # Room for one set per node: the second cannot follow the first.
    nf = nodes_file(tmp_path / "nodes.toml", ssd, size * 1.5 / 1e6)
    placed = json.loads(cli("cache", "place", nf, a.extracted_cs, b.extracted_cs, "--json", check=True).stdout)
    chosen = {p["set"]: p["node"] for p in placed["placements"]}
    assert sorted(chosen.values()) == ["gpu01", "gpu02"]

    res = api.prestage_sets(client, nf, [a.extracted_cs, b.extracted_cs], hold=True)
    assert res.ok
    for demo in (a, b):
        node = chosen[str(demo.extracted_cs)]
        other = ssd[next(n for n in ssd if n != node)]
        for s in demo.stacks:
            same_stack(s, cached_copy(ssd[node], s))
            assert not cached_copy(other, s).exists()
    by_node = {n.node: n for n in res.nodes}
    for label, node in chosen.items():
        (summary,) = by_node[node].sets
        assert summary["set"] == label and summary["node"] == node and summary["pinned"]
        assert summary["bytes_copied"] == size if label == str(a.extracted_cs) else summary["bytes_copied"] > 0
    assert all(len(pins(d)) == 1 for d in ssd.values())  # held by the workers

    # Again without --hold, by the command: nothing to copy, and the pins are dropped.
    again = cli("cache", "prestage", nf, a.extracted_cs, b.extracted_cs, "--dask", client.scheduler.address,
                    "--json", check=True)
    doc = json.loads(again.stdout)
    assert doc["ok"] and doc["bytes_copied"] == 0
    assert all(not pins(d) for d in ssd.values())


def test_prestage_reports_a_node_missing_from_the_cluster(two_nodes, tmp_path):
    client, ssd = two_nodes
    a = make_demo_project(tmp_path / "A" / "P1", seed=10)
    b = make_demo_project(tmp_path / "B" / "P1", seed=11)
    size = sum(os.path.getsize(s) for s in a.stacks)
    gone = tmp_path / "ssd-gpu09"
    gone.mkdir()
    nf = nodes_file(tmp_path / "nodes.toml", {"gpu01": ssd["gpu01"], "gpu09": gone}, size * 1.5 / 1e6)
    res = cli("cache", "prestage", nf, a.extracted_cs, b.extracted_cs, "--dask", client.scheduler.address,
                  "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["missing_nodes"] == ["gpu09"]
    (missing,) = [n for n in doc["nodes"] if n["node"] == "gpu09"]
    assert missing["workers"] == [] and len(missing["not_staged"]) == 1
    assert not (gone / "stacktools-cache").exists()
    text = cli("cache", "prestage", nf, a.extracted_cs, b.extracted_cs, "--dask", client.scheduler.address)
    assert text.returncode == 1 and "gpu09" in text.stdout and "missing from the cluster" in text.stdout


@pytest.fixture(scope="module")
def tagged_nodes(tmp_path_factory):
    """Two workers on one host that are two nodes by their node-<name> resource alone
    (no $STACKTOOLS_NODE: by name, both would be this host)."""
    with node_cluster(tmp_path_factory.mktemp("tagged"),
                      lambda n, d: {"resources": {f"node-{n}": 1}, "env": {"STACKTOOLS_SSD_PATH": str(d)}}) as got:
        yield got


def worker_of(client, node: str) -> str:
    """The address of the worker that is ``node`` (by resource, else by $STACKTOOLS_NODE)."""
    from stacktools.cluster.prestage import worker_node
    infos = client.scheduler_info()["workers"]
    tagged = [a for a, w in infos.items() if f"node-{node}" in (w.get("resources") or {})]
    return tagged[0] if tagged else next(a for a, n in client.run(worker_node).items() if n == node)


def prestage_while_its_worker_is_killed(client, nf, sets, node: str, blocker: dict) -> dict:
    """Start prestage while ``node``'s only worker is busy with a sleep, kill that
    worker once the staging task waits for it, and return what prestage did."""
    addr = worker_of(client, node)
    pid = client.run(os.getpid, workers=[addr])[addr]
    busy = client.submit(time.sleep, 4, pure=False, **blocker)
    wait_for(lambda: client.processing().get(addr), what="the sleep on the node's worker")
    box: dict = {}

    def run():
        try:
            box["res"] = api.prestage_sets(client, nf, sets)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            box["err"] = err
    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: client.run_on_scheduler(
        lambda dask_scheduler: any("prestage" in str(k) for k in dask_scheduler.tasks)), what="the staging task")
    assert "res" not in box and "err" not in box  # the kill lands while the set waits
    os.kill(pid, signal.SIGKILL)
    t.join(90)
    assert not t.is_alive(), "prestage hung after its worker restarted"
    del busy
    wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, what="the Nanny's new worker")
    assert pid not in client.run(os.getpid).values()
    return box


def test_a_node_matched_by_resource_is_staged_by_its_restarted_worker(tagged_nodes, tmp_path):
    client, ssd = tagged_nodes
    a = make_demo_project(tmp_path / "A" / "P1", seed=12)
    nf = nodes_file(tmp_path / "nodes.toml", {"gpu01": ssd["gpu01"]}, 1000)
    box = prestage_while_its_worker_is_killed(client, nf, [a.extracted_cs], "gpu01",
                                              {"resources": {"node-gpu01": 1}})
    assert "res" in box, box.get("err")
    res = box["res"]
    assert res.ok
    (node,) = res.nodes
    (summary,) = node.sets
    assert summary["node"] == "gpu01" and summary["bytes_copied"] > 0
    for s in a.stacks:
        same_stack(s, cached_copy(ssd["gpu01"], s))
        assert not cached_copy(ssd["gpu02"], s).exists()


def test_a_pinned_node_whose_worker_restarts_is_reported_not_waited_for(two_nodes, tmp_path):
    client, ssd = two_nodes
    a = make_demo_project(tmp_path / "A" / "P1", seed=13)
    nf = nodes_file(tmp_path / "nodes.toml", {"gpu01": ssd["gpu01"]}, 1000)
    box = prestage_while_its_worker_is_killed(client, nf, [a.extracted_cs], "gpu01",
                                              {"workers": [worker_of(client, "gpu01")]})
    err = box.get("err")
    assert isinstance(err, ClusterError), box
    assert "gpu01" in str(err) and "left the cluster" in str(err) and "node-gpu01=1" in str(err)
    # Rerun: the new worker is found, and the set is staged.
    again = api.prestage_sets(client, nf, [a.extracted_cs])
    assert again.ok
    for s in a.stacks:
        same_stack(s, cached_copy(ssd["gpu01"], s))


def test_the_cli_starts_without_distributed_until_dask_is_asked_for():
    code = ("import sys; from stacktools.cli.app import main; sys.argv=['stacktools','consolidate','--help'];\n"
            "try: main()\nexcept SystemExit: pass\nprint('distributed' in sys.modules)")
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.strip().endswith("False"), res.stderr
    assert "--dask" in res.stdout
