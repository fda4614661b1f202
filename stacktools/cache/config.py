"""Cache settings: CLI flags, then a config file, then environment variables.

Precedence is flags > config file > environment > built-in defaults. The SSD path
may contain environment variables (``$SLURM_TMPDIR/ssd``) so that one setting
works per node or per job; they are expanded wherever the value comes from.

Config file (TOML), from ``--config``, ``$STACKTOOLS_CONFIG`` or
``~/.config/stacktools/config.toml``::

    [cache]
    ssd_path = "/scratch/$USER"
    quota_mb = 500000
    reserve_mb = 10000
    lifetime_days = 30
    threads = 4
    create_ssd_path = false   # true: a missing SSD path is created (a per-job $SLURM_TMPDIR/ssd)

MB means 1,000,000 bytes throughout. A per-project default for whether jobs use the
cache lives in
``PROJECT/.stacktools-cache.json`` (see :func:`project_use_cache`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from stacktools.errors import CacheConfigError, Hint

ENV_SSD = "STACKTOOLS_SSD_PATH"
ENV_QUOTA = "STACKTOOLS_CACHE_QUOTA_MB"
ENV_RESERVE = "STACKTOOLS_CACHE_RESERVE_MB"
ENV_LIFETIME = "STACKTOOLS_CACHE_LIFETIME_DAYS"
ENV_THREADS = "STACKTOOLS_CACHE_NUM_THREADS"
ENV_CONFIG = "STACKTOOLS_CONFIG"
# CryoSPARC's names for the same settings, read after ours so that a site's
# existing config.sh works unchanged.
ENV_FALLBACKS = {ENV_SSD: "CRYOSPARC_SSD_PATH", ENV_THREADS: "CRYOSPARC_CACHE_NUM_THREADS",
                 ENV_LIFETIME: "CRYOSPARC_SSD_CACHE_LIFETIME_DAYS"}

CACHE_DIRNAME = "stacktools-cache"  # the directory under the SSD path that the cache owns
DEFAULT_LIFETIME_DAYS = 30.0
DEFAULT_THREADS = 2
DEFAULT_RESERVE_MB = 10_000
PROJECT_FILE = ".stacktools-cache.json"
MB = 1_000_000
DAY_S = 86400.0

_UNEXPANDED = re.compile(r"\$(\w+|\{[^}]*\})")


def mb_to_bytes(mb: float) -> int:
    """Bytes in ``mb`` MB (1,000,000 bytes each), truncated to a whole byte."""
    return int(mb * MB)


def days_to_seconds(days: float) -> float:
    """Seconds in ``days`` days (an entry lifetime)."""
    return days * DAY_S


def mb_text(n: int) -> str:
    """Bytes as the cache's unit, for messages about quota and reserve: ``12.3 MB``."""
    return f"{n / MB:,.1f} MB"


def missing_ssd_error(ssd: Path) -> CacheConfigError:
    """Why a missing SSD path is refused (a typo or an unmounted disk must not fill
    the root filesystem)."""
    return CacheConfigError(f"{ssd}: SSD path does not exist (a typo or an unmounted disk?)",
                            hints=[Hint("create", "; give {} or set create_ssd_path = true in the "
                                                  "config to create it")])


def human_bytes(n: int) -> str:
    """Short decimal size for messages, ``6.5 MB`` or ``999 bytes`` (no exact count)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


@dataclass(frozen=True)
class CacheConfig:
    """Resolved cache settings.

    ``ssd_path`` is the SSD directory (the cache lives in ``ssd_path/stacktools-cache``);
    ``quota_mb`` the most the cache may hold (``None``: no quota); ``reserve_mb`` the
    least free space to leave on the device; ``lifetime_days`` how long an entry
    lives after its last access; ``threads`` the number of copy threads; ``shared``
    whether a new cache root is made for all users (world-writable, sticky) rather
    than private to its user (config file only); ``create_ssd_path`` whether a
    missing SSD path may be created (else it is an error: a typo or an unmounted
    disk must not fill the root filesystem; config file only);
    ``sources`` says where each value came from (``flag``, ``file``, ``env``, ``default``).
    """

    ssd_path: Path
    quota_mb: float | None = None
    reserve_mb: float = DEFAULT_RESERVE_MB
    lifetime_days: float = DEFAULT_LIFETIME_DAYS
    threads: int = DEFAULT_THREADS
    shared: bool = False
    sources: Mapping[str, str] | None = None
    create_ssd_path: bool = False

    @property
    def quota_bytes(self) -> int | None:
        return None if self.quota_mb is None else mb_to_bytes(self.quota_mb)

    @property
    def reserve_bytes(self) -> int:
        return mb_to_bytes(self.reserve_mb)

    @property
    def lifetime_s(self) -> float:
        return days_to_seconds(self.lifetime_days)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ssd_path"] = str(self.ssd_path)
        d["sources"] = dict(self.sources or {})
        return d


def expand_path(value: str, what: str, env: Mapping[str, str] | None = None) -> Path:
    """Expand ``$VAR``, ``${VAR}`` and ``~`` in ``value``; unset variables are an error."""
    env = os.environ if env is None else env
    missing = [m.strip("{}") for m in _UNEXPANDED.findall(value) if m.strip("{}") not in env]
    if missing:
        raise CacheConfigError(f"{what}: {value!r} uses unset environment variable ${missing[0]}")
    out = _UNEXPANDED.sub(lambda m: env[m.group(1).strip("{}")], value)
    return Path(os.path.expanduser(out))


def default_config_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    return Path(os.path.expanduser("~/.config/stacktools/config.toml"))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The ``[cache]`` table of a TOML config file (empty if the file does not exist)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = Path(path)
    if not p.exists():
        return {}
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise CacheConfigError(f"{p}: not a valid TOML config file: {err}") from err
    table = data.get("cache", {})
    if not isinstance(table, dict):
        raise CacheConfigError(f"{p}: [cache] must be a table")
    known = {"ssd_path", "quota_mb", "reserve_mb", "lifetime_days", "threads", "shared",
             "create_ssd_path"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise CacheConfigError(f"{p}: unknown [cache] setting {unknown[0]!r}")
    if not isinstance(table.get("create_ssd_path", False), bool):
        raise CacheConfigError(f"{p}: [cache] create_ssd_path must be true or false")
    return table


def _number(value: Any, what: str, kind=float, minimum: float = 0):
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise CacheConfigError(f"{what}: {value!r} is not a number") from None
    if v < minimum:
        raise CacheConfigError(f"{what}: {value!r} must be at least {minimum}")
    return v


def resolve_config(ssd_path: str | os.PathLike | None = None, *, quota_mb: float | None = None,
                   reserve_mb: float | None = None, lifetime_days: float | None = None,
                   threads: int | None = None, config_file: str | os.PathLike | None = None,
                   env: Mapping[str, str] | None = None) -> CacheConfig:
    """Combine flags, config file and environment into a :class:`CacheConfig`.

    Parameters
    ----------
    ssd_path, quota_mb, reserve_mb, lifetime_days, threads
        Values given as flags or arguments; ``None`` means "not given".
    config_file
        TOML file to read; default ``$STACKTOOLS_CONFIG`` or
        ``~/.config/stacktools/config.toml`` (a missing default file is fine).
    env
        Environment to read (default ``os.environ``).

    Raises :class:`~stacktools.errors.CacheConfigError` when no SSD path is set anywhere
    or a value is invalid.
    """
    env = os.environ if env is None else env
    if config_file is not None and not Path(config_file).exists():
        raise CacheConfigError(f"{config_file}: config file not found")
    cfg_path = Path(config_file) if config_file is not None else default_config_file(env)
    file_vals = read_config_file(cfg_path)
    env_vals: dict[str, Any] = {}
    for key, ours in (("ssd_path", ENV_SSD), ("quota_mb", ENV_QUOTA), ("reserve_mb", ENV_RESERVE),
                      ("lifetime_days", ENV_LIFETIME), ("threads", ENV_THREADS)):
        for name in (ours, ENV_FALLBACKS.get(ours)):
            if name and env.get(name, "").strip():
                env_vals[key] = (env[name], name)
                break
    flags = {"ssd_path": ssd_path, "quota_mb": quota_mb, "reserve_mb": reserve_mb,
             "lifetime_days": lifetime_days, "threads": threads}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, flag in flags.items():
        if flag is not None:
            values[key], sources[key], what = flag, "flag", f"--{key.replace('_', '-')}"
        elif key in file_vals:
            values[key], sources[key], what = file_vals[key], "file", f"{cfg_path} [cache] {key}"
        elif key in env_vals:
            values[key], what = env_vals[key][0], env_vals[key][1]
            sources[key] = "env"
        else:
            sources[key] = "default"
            continue
        if key == "ssd_path":
            values[key] = expand_path(str(values[key]), what, env)
        elif key == "threads":
            values[key] = _number(values[key], what, int, 1)
        elif key == "lifetime_days":
            values[key] = _number(values[key], what, float, 0)
        else:
            values[key] = _number(values[key], what, float, 0)
    if "ssd_path" not in values:
        raise CacheConfigError(f"no SSD path: set ssd_path in {cfg_path} or ${ENV_SSD}",
                               hints=[Hint("ssd_path", ", or give {}", None)])
    shared = file_vals.get("shared", False)
    if not isinstance(shared, bool):
        raise CacheConfigError(f"{cfg_path} [cache] shared: {shared!r} must be true or false")
    return CacheConfig(sources=sources, shared=shared,
                       create_ssd_path=file_vals.get("create_ssd_path", False), **values)


def _project_file(project_dir: str | os.PathLike) -> Path:
    return Path(project_dir) / PROJECT_FILE


def project_use_cache(project_dir: str | os.PathLike) -> bool | None:
    """The project's default for whether jobs use the cache; ``None`` if unset."""
    p = _project_file(project_dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise CacheConfigError(f"{p}: unreadable project cache setting: {err}") from err
    v = data.get("use_cache") if isinstance(data, dict) else None
    return v if isinstance(v, bool) else None


def set_project_use_cache(project_dir: str | os.PathLike, value: bool | None) -> None:
    """Set (``True``/``False``) or unset (``None``) the project's use-cache default."""
    from stacktools.formats.atomic import atomic_output
    p = _project_file(project_dir)
    if not Path(project_dir).is_dir():
        raise CacheConfigError(f"{project_dir}: project directory not found")
    if value is None:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        return
    with atomic_output(p) as fh:
        fh.write(json.dumps({"use_cache": bool(value)}).encode() + b"\n")


def use_cache_for(project_dir: str | os.PathLike, flag: bool | None) -> bool:
    """Whether to use the cache: the flag if given, else the project default, else yes."""
    if flag is not None:
        return flag
    v = project_use_cache(project_dir)
    return True if v is None else v
