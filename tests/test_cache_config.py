"""Cache settings: flags > config file > environment, and the per-project default."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacktools.cache import (
    CacheConfig,
    project_use_cache,
    resolve_config,
    set_project_use_cache,
    use_cache_for,
)
from stacktools.cache.config import days_to_seconds, human_bytes, mb_to_bytes
from stacktools.errors import CacheConfigError


def _file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_precedence(tmp_path):
    env = {"STACKTOOLS_SSD_PATH": "/env/ssd", "STACKTOOLS_CACHE_LIFETIME_DAYS": "7",
           "STACKTOOLS_CACHE_NUM_THREADS": "5", "STACKTOOLS_CACHE_QUOTA_MB": "100"}
    cfg_file = _file(tmp_path, '[cache]\nssd_path = "/file/ssd"\nquota_mb = 50\n')
    c = resolve_config(quota_mb=10, config_file=cfg_file, env=env)
    assert c.quota_mb == 10 and c.sources["quota_mb"] == "flag"
    assert c.ssd_path == Path("/file/ssd") and c.sources["ssd_path"] == "file"
    assert c.lifetime_days == 7 and c.threads == 5
    c = resolve_config(env=env, config_file=_file(tmp_path, ""))
    assert c.ssd_path == Path("/env/ssd") and c.quota_mb == 100


def test_defaults_and_fallback(tmp_path):
    env = {"CRYOSPARC_SSD_PATH": "/cs/ssd", "STACKTOOLS_CONFIG": str(tmp_path / "none.toml")}
    c = resolve_config(env=env)
    assert c.ssd_path == Path("/cs/ssd")
    assert c.lifetime_days == 30 and c.threads == 2 and c.quota_mb is None
    env["STACKTOOLS_SSD_PATH"] = "/ours"
    assert resolve_config(env=env).ssd_path == Path("/ours")


def test_env_vars_expand_in_ssd_path(tmp_path):
    env = {"STACKTOOLS_SSD_PATH": "$SLURM_TMPDIR/ssd-${SLURM_JOB_ID}", "SLURM_TMPDIR": "/local",
           "SLURM_JOB_ID": "42", "STACKTOOLS_CONFIG": str(tmp_path / "none.toml")}
    assert resolve_config(env=env).ssd_path == Path("/local/ssd-42")
    del env["SLURM_JOB_ID"]
    with pytest.raises(CacheConfigError, match=r"\$SLURM_JOB_ID"):
        resolve_config(env=env)


@pytest.mark.parametrize("text", ["[cache]\nthreads = 0\n", "[cache]\nquota = 5\n", "not toml ["])
def test_bad_config_is_one_line_error(tmp_path, text):
    with pytest.raises(CacheConfigError) as err:
        resolve_config("/x", config_file=_file(tmp_path, text), env={})
    assert "\n" not in str(err.value)


def test_no_ssd_path_anywhere(tmp_path):
    with pytest.raises(CacheConfigError, match="no SSD path"):
        resolve_config(env={"STACKTOOLS_CONFIG": str(tmp_path / "none.toml")})


def test_project_default_set_and_unset(tmp_path):
    assert project_use_cache(tmp_path) is None and use_cache_for(tmp_path, None) is True
    set_project_use_cache(tmp_path, False)
    assert project_use_cache(tmp_path) is False and use_cache_for(tmp_path, None) is False
    assert use_cache_for(tmp_path, True) is True
    set_project_use_cache(tmp_path, None)
    assert project_use_cache(tmp_path) is None


def test_units_and_short_sizes():
    assert mb_to_bytes(1.5) == 1_500_000 and mb_to_bytes(0.0000019) == 1
    assert days_to_seconds(30) == 30 * 86400
    c = CacheConfig(ssd_path=Path("/ssd"), quota_mb=0.25, reserve_mb=2, lifetime_days=0.5)
    assert (c.quota_bytes, c.reserve_bytes, c.lifetime_s) == (250_000, 2_000_000, 43_200.0)
    # The short form used in placement explanations (the CLI adds exact counts itself).
    assert [human_bytes(n) for n in (0, 999, 1000, 6_506_240, 54_912_000_000, 2 * 10**15)] == [
        "0 bytes", "999 bytes", "1.0 kB", "6.5 MB", "54.9 GB", "2,000.0 TB"]
