"""Shared fixtures: the real files in tests/data and generated demo projects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stacktools.demo import DemoProject, make_demo_project

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real CryoSPARC and RELION files vendored in tests/data (see its README).

    Tests read them in place or copy them to ``tmp_path``; they never write here.
    """
    if not (REAL_DATA / "cryosparc").is_dir():
        pytest.fail(f"test data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def _demo_template(tmp_path_factory) -> DemoProject:
    return make_demo_project(tmp_path_factory.mktemp("demo-template") / "P1")


@pytest.fixture
def demo(_demo_template: DemoProject, tmp_path: Path) -> DemoProject:
    """A fresh copy of the small demo project that a test may modify."""
    dst = tmp_path / "P1"
    shutil.copytree(_demo_template.project_dir, dst)
    rel = lambda p: dst / Path(p).relative_to(_demo_template.project_dir)  # noqa: E731
    return DemoProject(dst, rel(_demo_template.extracted_cs), rel(_demo_template.selected_cs),
                       rel(_demo_template.passthrough_cs), [rel(s) for s in _demo_template.stacks],
                       _demo_template.particles, _demo_template.selected)


def _stacktools_command() -> list[str]:
    import sys
    exe = Path(sys.executable).parent / "stacktools"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "stacktools.cli.app"]


@pytest.fixture
def run_cli():
    """Run the ``stacktools`` command in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    def run(*args, check: bool = False, **kw):
        res = subprocess.run(_stacktools_command() + [str(a) for a in args],
                             capture_output=True, text=True, **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"stacktools {' '.join(map(str, args))} failed:\n{res.stderr}")
        return res

    return run


def assert_one_line_error(res, *fragments: str) -> None:
    """A CLI failure: non-zero exit, one line on stderr naming what and where, no traceback."""
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
