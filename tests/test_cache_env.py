"""CryoSPARC's own environment variables configure the cache, after stacktools' names."""

from __future__ import annotations

import pytest

from stacktools.cache.config import resolve_config
from stacktools.errors import CacheConfigError


def _env(tmp_path, **kw):
    return {"STACKTOOLS_CONFIG": str(tmp_path / "none.toml"), "CRYOSPARC_SSD_PATH": "/cs/ssd", **kw}


def test_cryosparc_threads_and_lifetime_are_honoured(tmp_path):
    cfg = resolve_config(env=_env(tmp_path, CRYOSPARC_CACHE_NUM_THREADS="7",
                                  CRYOSPARC_SSD_CACHE_LIFETIME_DAYS="3.5"))
    assert cfg.threads == 7
    assert cfg.lifetime_days == 3.5
    assert cfg.sources["threads"] == "env" and cfg.sources["lifetime_days"] == "env"


def test_stacktools_names_win_over_cryosparc_names(tmp_path):
    cfg = resolve_config(env=_env(tmp_path, CRYOSPARC_CACHE_NUM_THREADS="7", STACKTOOLS_CACHE_NUM_THREADS="3",
                                  CRYOSPARC_SSD_CACHE_LIFETIME_DAYS="9", STACKTOOLS_CACHE_LIFETIME_DAYS="1"))
    assert (cfg.threads, cfg.lifetime_days) == (3, 1.0)


def test_bad_cryosparc_value_names_the_variable(tmp_path):
    with pytest.raises(CacheConfigError, match="CRYOSPARC_CACHE_NUM_THREADS"):
        resolve_config(env=_env(tmp_path, CRYOSPARC_CACHE_NUM_THREADS="many"))
