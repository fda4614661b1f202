"""``stacktools cache …``: the node-local SSD particle cache.

Thin wrappers over :mod:`stacktools.cache`; every command has ``--json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from stacktools.cli.options import ALLOW_OUTSIDE_PROJECT, PROJECT_DIR_HELP, cli_app
from stacktools.cli.output import console, emit_json, fmt_bytes, kv_table, table

app = cli_app(help="Manage a node-local SSD particle cache.")

_SSD_HELP = "SSD directory [default: config file, $STACKTOOLS_SSD_PATH, $CRYOSPARC_SSD_PATH]."


def _ssd_opts():
    return {
        "ssd_path": typer.Option(None, "--ssd-path", help=_SSD_HELP),
        "quota_mb": typer.Option(None, "--quota-mb", min=0,
                                 help="Most the cache may hold, MB [default: no quota]."),
        "reserve_mb": typer.Option(None, "--reserve-mb", min=0,
                                   help="Least free space to leave on the SSD, MB [default: 10000]."),
        "lifetime_days": typer.Option(None, "--lifetime-days", min=0,
                                      help="Entry lifetime after last access [default: 30, "
                                      "$STACKTOOLS_CACHE_LIFETIME_DAYS, $CRYOSPARC_SSD_CACHE_LIFETIME_DAYS]."),
        "threads": typer.Option(None, "--threads", min=1,
                                help="Copy threads [default: 2, $STACKTOOLS_CACHE_NUM_THREADS, "
                                "$CRYOSPARC_CACHE_NUM_THREADS]."),
        "create": typer.Option(False, "--create", help="Create the SSD path if it is missing "
                               "[default: off: a missing SSD path is an error, "
                               "unless the config sets create_ssd_path]."),
        "config": typer.Option(None, "--config", help="TOML config file "
                               "[default: $STACKTOOLS_CONFIG or ~/.config/stacktools/config.toml]."),
    }


_O = _ssd_opts()


def _cache(ssd_path, quota_mb, reserve_mb, lifetime_days, threads, config, create: bool = True):
    from stacktools.cache import Cache
    return Cache(ssd_path, quota_mb=quota_mb, reserve_mb=reserve_mb, lifetime_days=lifetime_days,
                 threads=threads, config_file=config, create=create)


def _wait_printer(quiet: bool):
    """An ``on_wait`` that prints each distinct wait (lock and holder) once; silent if quiet."""
    if quiet:
        return None
    seen: set[str] = set()

    def say(msg: str) -> None:
        if msg not in seen:
            seen.add(msg)
            sys.stderr.write(f"stacktools: {msg}\n")
            sys.stderr.flush()
    return say


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to about ``width`` characters by dropping the middle of its directory.

    The file name is always kept whole (it is what tells stacks apart), even when it
    alone is wider than ``width``.
    """
    if len(text) <= width:
        return text
    head, sep, name = text.rpartition("/")
    room = width - 1 - len(sep + name)
    return (head[:room] if room > 0 else "") + "…" + sep + name


def _rate(nbytes: int, seconds: float) -> str:
    from stacktools.cache.config import MB
    return f"{nbytes / seconds / MB:,.1f} MB/s" if seconds > 0 and nbytes else "nothing"


def _open_set(particles: Path, project_dir: Optional[Path], passthrough: Optional[Path],
              allow_outside_project: bool = False):
    from stacktools.particles import ParticleSet
    return ParticleSet.open(particles, project_dir, passthrough,
                            allow_outside_project=allow_outside_project)


def _entry_rows(entries) -> list[tuple[str, str]]:
    return [(e["key"] if isinstance(e, dict) else e.key,
             fmt_bytes(e["size"] if isinstance(e, dict) else e.size)) for e in entries]


def _print_plan(plan, title: str) -> None:
    from stacktools.cache import full_error
    from stacktools.cli.options import FLAGS
    d = plan.to_dict(files=False)
    rows = [
        ("fits", "yes" if plan.fits else "NO: " + full_error(plan).message_with(FLAGS)),
        ("to copy", f"{plan.files_to_copy:,} files, {fmt_bytes(plan.bytes_to_copy)}"),
        ("already cached and valid", f"{len(plan.cached):,} files, {fmt_bytes(plan.bytes_cached)}"),
    ]
    if plan.waiting:
        rows.append(("being copied by another process", f"{len(plan.waiting):,} files"))
    if plan.from_source:
        rows.append(("left on the source (--partial)",
                     f"{len(plan.from_source):,} files, {fmt_bytes(d['bytes_from_source'])}"))
    rows += [
        ("would expire", f"{len(plan.expire):,} entries, {fmt_bytes(d['bytes_expired'])}"),
        ("would evict (LRU)", f"{len(plan.evict):,} entries, {fmt_bytes(d['bytes_evicted'])}"),
        ("quota", "none" if plan.quota_bytes is None else fmt_bytes(plan.quota_bytes)),
        ("reserve", fmt_bytes(plan.reserve_bytes)),
    ]
    if plan.fits:
        rows += [("cache use before → after",
                  f"{fmt_bytes(d['used_bytes_before'])} → {fmt_bytes(d['used_bytes_after'])}"),
                 ("free before → after", f"{fmt_bytes(d['free_bytes_before'])} → {fmt_bytes(d['free_bytes_after'])}")]
    else:  # it will not run: there is no "after"
        rows += [("cache use now", fmt_bytes(d["used_bytes_before"])), ("free now", fmt_bytes(d["free_bytes_before"]))]
    if plan.consolidated_bytes is not None and plan.cache_bytes is not None:
        saved = plan.cache_bytes - plan.consolidated_bytes
        frac = saved / plan.cache_bytes if plan.cache_bytes else 0.0
        rows.append(("after consolidation", f"{fmt_bytes(plan.consolidated_bytes)} instead of "
                     f"{fmt_bytes(plan.cache_bytes)}: {fmt_bytes(saved)} ({frac:.1%}) less to cache"))
    if plan.choices is not None:
        rows.append(("usable for this set", f"{fmt_bytes(plan.usable_bytes)}: its cached copies plus the room "
                     "left by quota, reserve and free space after evicting"))
    out = console()
    out.print(kv_table(rows, title=title))
    if plan.choices:
        t = table("what consolidating and shrinking would take", ("choice", "size", "fits the usable space"))
        for c in plan.choices:
            t.add_row(c["option"], fmt_bytes(c["bytes"]), "yes" if c["fits"] else "no")
        out.print(t)
    for name, entries in (("expire", plan.expire), ("evict (least recently used first)", plan.evict)):
        if entries:
            t = table(f"would {name}", ("entry", "bytes"))
            for k, v in _entry_rows(entries):
                t.add_row(k, v)
            out.print(t)


@app.command("plan")
def plan_cmd(
    particles: Path = typer.Argument(..., help="Particles .cs or RELION particle STAR.", dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough", help="Passthrough .cs to join on uid."),
    partial: bool = typer.Option(False, "--partial", help="Plan what fits if the whole set does not."),
    ssd_path: Optional[str] = _O["ssd_path"], quota_mb: Optional[float] = _O["quota_mb"],
    reserve_mb: Optional[float] = _O["reserve_mb"], lifetime_days: Optional[float] = _O["lifetime_days"],
    threads: Optional[int] = _O["threads"], config: Optional[Path] = _O["config"],
    create: bool = _O["create"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Show what `cache sync` would copy, expire and evict, and whether it fits.

    A check: it copies, creates and writes nothing. Exit status 0 if the set fits,
    1 if it does not, 2 for an error (such as a missing SSD path).
    """
    from stacktools.cache import plan_without_writing, resolve_config
    cfg = resolve_config(ssd_path, quota_mb=quota_mb, reserve_mb=reserve_mb, lifetime_days=lifetime_days,
                         threads=threads, config_file=config)
    pset = _open_set(particles, project_dir, passthrough, allow_outside_project)
    plan = plan_without_writing(pset, cfg, partial=partial, consolidation=True, create=create)
    if as_json:
        emit_json(plan.to_dict())
    else:
        _print_plan(plan, f"cache plan for {particles}")
    if not plan.fits:
        raise typer.Exit(1)


@app.command("sync")
def sync_cmd(
    particles: Path = typer.Argument(..., help="Particles .cs or RELION particle STAR.", dir_okay=False),
    command: Optional[List[str]] = typer.Argument(None, help="After `--`: a command to run while the set is pinned."),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    passthrough: Optional[Path] = typer.Option(None, "--passthrough", help="Passthrough .cs to join on uid."),
    partial: bool = typer.Option(False, "--partial",
                                 help="Cache what fits, in the set's order; read the rest from the source."),
    write_cs: Optional[Path] = typer.Option(None, "--write-cs",
                                            help="Write a .cs whose blob/path points at the cached copies."),
    write_star: Optional[Path] = typer.Option(None, "--write-star",
                                              help="For a STAR input: write it with every rlnImageName pointing "
                                                   "at the cached copies, by absolute path (.mrc stacks as "
                                                   "x.mrc:mrcs, which RELION reads as stacks)."),
    use_cache: Optional[bool] = typer.Option(None, "--use-cache/--no-use-cache",
                                             help="Override the project's default (`cache default`)."),
    ssd_path: Optional[str] = _O["ssd_path"], quota_mb: Optional[float] = _O["quota_mb"],
    reserve_mb: Optional[float] = _O["reserve_mb"], lifetime_days: Optional[float] = _O["lifetime_days"],
    threads: Optional[int] = _O["threads"], config: Optional[Path] = _O["config"],
    create: bool = _O["create"],
    check_content: bool = typer.Option(False, "--check-content", help="Hash each source and serve a copy only if "
                                       "its content matches (for sources whose mtimes cannot be trusted) "
                                       "[default: off]."),
    list_paths: bool = typer.Option(False, "--list",
                                    help="Also print every source → cached pair [default: summary only]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors [default: off]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (with every source → cached pair)."),
    allow_outside_project: bool = ALLOW_OUTSIDE_PROJECT,
) -> None:
    """Make every stack of a set present and valid in the SSD cache; print a summary.

    With `-- CMD ARGS` the command runs while the set is pinned (nothing evicts or
    replaces it, for as long as the command lives, even if this process is killed),
    and its exit status is returned.
    """
    import contextlib
    import shutil
    import time

    from stacktools.cache import sync_particles
    from stacktools.cli.output import byte_progress

    started = time.monotonic()
    pset = _open_set(particles, project_dir, passthrough, allow_outside_project)
    with contextlib.ExitStack() as bars:
        result = sync_particles(
            pset, lambda: _cache(ssd_path, quota_mb, reserve_mb, lifetime_days, threads, config, create),
            use_cache=use_cache, partial=partial, hold=bool(command), check_content=check_content,
            progress_for=lambda total: bars.enter_context(
                byte_progress("caching", total, quiet or not sys.stderr.isatty())),
            on_wait=_wait_printer(quiet), write_cs=write_cs, write_star=write_star)
    elapsed = time.monotonic() - started
    for warning in result.warnings:
        sys.stderr.write(f"stacktools: warning: {warning}\n")
    if as_json:
        d = result.to_dict()
        if write_cs is not None:
            d["cs"] = str(write_cs)
        if write_star is not None:
            d["star"] = str(write_star)
        emit_json(d)
    elif not quiet:
        rows = [("copied", f"{result.copied:,} files, {fmt_bytes(result.bytes_copied)}"),
                ("already cached", f"{result.reused:,} files, {fmt_bytes(result.bytes_reused)}"),
                ("expired", f"{result.expired:,} entries, {fmt_bytes(result.bytes_expired)}"),
                ("evicted", f"{result.evicted:,} entries, {fmt_bytes(result.bytes_evicted)}")]
        if result.from_source:
            rows.append(("read from the source", f"{len(result.from_source):,} files"))
        if result.versions:
            rows.append(("new versions beside copies a running job reads",
                         f"{len(result.versions):,} files"))
        if result.retired:
            rows.append(("old versions removed", f"{result.retired:,} files"))
        if not result.use_cache:
            rows.insert(0, ("cache", "not used (project default or --no-use-cache)"))
        rows.append(("time", f"{elapsed:.1f} s, {_rate(result.bytes_copied, elapsed)} copied"))
        out = console(stderr=bool(command))
        out.print(kv_table(rows, title=f"cache sync {particles}"))
        if list_paths:
            side = max(20, (shutil.get_terminal_size((160, 24)).columns - 3) // 2)
            for src, dst in result.paths.items():
                out.print(f"{shorten_middle(src, side)} → {shorten_middle(dst, side)}",
                          soft_wrap=True, markup=False, highlight=False)
    if command:
        import subprocess
        try:
            # The command inherits the locked pin: the set stays pinned while it runs,
            # even if this wrapper is killed.
            rc = subprocess.call(command, pass_fds=[result.pin_fd] if result.pin_fd is not None else [])
        finally:
            result.release()
        raise typer.Exit(rc)


def _simple(fn_name: str, ssd_path, quota_mb, reserve_mb, lifetime_days, threads, config, **kw):
    cache = _cache(ssd_path, quota_mb, reserve_mb, lifetime_days, threads, config)
    return getattr(cache, fn_name)(**kw).to_dict()


def _print_removed(d: dict, title: str) -> None:
    rows = [("removed", f"{d['removed']:,} entries, {fmt_bytes(d['bytes_removed'])}"),
            ("skipped (in use)", f"{d['skipped_in_use']:,}"),
            ("crashed-copy temporaries swept", f"{d['temps_swept']:,}")]
    console().print(kv_table(rows, title=title))


@app.command("status")
def status_cmd(
    inventory: bool = typer.Option(False, "--inventory", help="With --json: add the full inventory snapshot "
                                   "(for planning on another machine)."),
    ssd_path: Optional[str] = _O["ssd_path"], quota_mb: Optional[float] = _O["quota_mb"],
    reserve_mb: Optional[float] = _O["reserve_mb"], lifetime_days: Optional[float] = _O["lifetime_days"],
    threads: Optional[int] = _O["threads"], config: Optional[Path] = _O["config"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Usage against quota and reserve, entries, oldest and newest entry, bytes per project."""
    cache = _cache(ssd_path, quota_mb, reserve_mb, lifetime_days, threads, config)
    st = cache.status().to_dict()
    if as_json:
        if inventory:
            st["inventory"] = cache.inventory().to_dict()
        emit_json(st)
        return
    rows = [("cache", st["root"]),
            ("entries", f"{st['entries']:,} ({st['in_use']:,} in use, {st['expired']:,} expired)"),
            ("bytes", fmt_bytes(st["bytes"])),
            ("quota", "none" if st["quota_bytes"] is None else fmt_bytes(st["quota_bytes"])),
            ("reserve", fmt_bytes(st["reserve_bytes"])),
            ("free on the SSD", fmt_bytes(st["free_bytes"])),
            ("files in the cache dir it does not own", fmt_bytes(st["foreign_bytes_in_cache_dir"])),
            ("lifetime", f"{st['lifetime_days']:g} days"), ("copy threads", str(st["threads"]))]
    for k in ("oldest", "newest"):
        if st[k]:
            rows.append((f"{k} (last access)", f"{st[k]['last_access_iso']} {st[k]['source']}"))
    out = console()
    out.print(kv_table(rows, title="SSD cache"))
    if st["bytes_per_project"]:
        t = table("bytes per project", ("project", "bytes"))
        for p, n in sorted(st["bytes_per_project"].items()):
            t.add_row(p, fmt_bytes(n))
        out.print(t)
    for item in st.get("foreign_paths", []):
        out.print(f"not the cache's: {item['path']}: {item['what']}")
    for w in st.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)


@app.command("clean")
def clean_cmd(
    ssd_path: Optional[str] = _O["ssd_path"], lifetime_days: Optional[float] = _O["lifetime_days"],
    config: Optional[Path] = _O["config"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Expire entries past their lifetime (not in use); sweep crashed copies' temporaries."""
    d = _simple("clean", ssd_path, None, None, lifetime_days, None, config)
    emit_json(d) if as_json else _print_removed(d, "cache clean")


@app.command("clear")
def clear_cmd(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do it without asking."),
    ssd_path: Optional[str] = _O["ssd_path"], config: Optional[Path] = _O["config"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Remove every entry the cache owns (not in use). Files it does not own are never touched."""
    if not yes:
        if not sys.stdin.isatty() or not typer.confirm("Remove every cache entry not in use?"):
            from stacktools.errors import CacheError
            raise CacheError("clear needs --yes (or a yes at the prompt)")
    d = _simple("clear", ssd_path, None, None, None, None, config)
    emit_json(d) if as_json else _print_removed(d, "cache clear")


@app.command("evict")
def evict_cmd(
    particles: Optional[Path] = typer.Argument(None, help="Evict this set's entries.", dir_okay=False),
    project_dir: Optional[Path] = typer.Option(None, "--project-dir", "-p", help=PROJECT_DIR_HELP),
    mb: Optional[float] = typer.Option(None, "--mb", min=0,
                                       help="Evict least-recently-used entries until this many MB are freed."),
    ssd_path: Optional[str] = _O["ssd_path"], config: Optional[Path] = _O["config"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evict a set's entries, or free --mb by LRU; entries in use are skipped."""
    if (particles is None) == (mb is None):
        raise typer.BadParameter("give either PARTICLES.cs or --mb")
    cache = _cache(ssd_path, None, None, None, None, config)
    if particles is not None:
        # Eviction only matches cache entries by name; it reads no source stack.
        d = cache.evict(paths=_open_set(particles, project_dir, None, True).stack_paths).to_dict()
    else:
        from stacktools.cache.config import mb_to_bytes
        d = cache.evict(nbytes=mb_to_bytes(mb)).to_dict()
    emit_json(d) if as_json else _print_removed(d, "cache evict")


@app.command("verify")
def verify_cmd(
    fix: bool = typer.Option(False, "--fix",
                             help="Remove entries whose source changed or vanished, or whose copy is damaged."),
    content: bool = typer.Option(False, "--content", help="Also read the sources and compare them with the "
                                 "copies' digests [default: off: only the copies are read]."),
    ssd_path: Optional[str] = _O["ssd_path"], config: Optional[Path] = _O["config"],
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Re-check every entry: source size and mtime, copy against its recorded digest."""
    d = _simple("verify", ssd_path, None, None, None, None, config, fix=fix, content=content)
    if as_json:
        emit_json(d)
        return
    out = console()
    out.print(kv_table([("checked", f"{d['checked']:,}"), ("ok", f"{d['ok']:,}"),
                        ("problems", f"{len(d['problems']):,}")], title="cache verify"))
    for p in d["problems"]:
        out.print(f"{p['problem']}: {p['source']}" + (" (removed)" if p["removed"] else ""))
    if d["problems"] and not fix:
        raise typer.Exit(1)


@app.command("default")
def default_cmd(
    project_dir: Path = typer.Option(..., "--project-dir", "-p", help="CryoSPARC project directory."),
    on: Optional[bool] = typer.Option(None, "--on/--off", help="Jobs of this project use the cache, or not."),
    unset: bool = typer.Option(False, "--unset", help="Remove the project's default (the cache is used)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show, set or unset a project's default for whether jobs use the cache."""
    from stacktools.cache import project_use_cache, set_project_use_cache
    if unset and on is not None:
        raise typer.BadParameter("give --on, --off or --unset, not two")
    if unset:
        set_project_use_cache(project_dir, None)
    elif on is not None:
        set_project_use_cache(project_dir, on)
    v = project_use_cache(project_dir)
    if as_json:
        emit_json({"project_dir": str(project_dir), "use_cache": v, "effective": True if v is None else v})
    else:
        console().print(f"{project_dir}: use cache = "
                        f"{'unset (yes)' if v is None else ('yes' if v else 'no')}")


from stacktools.cli.placement import place as _place  # noqa: E402  (multi-node placement lives in its own module)

app.command("place")(_place)
from stacktools.cli.prestage import prestage as _prestage  # noqa: E402  (runs on a Dask cluster: its own module)

app.command("prestage")(_prestage)
