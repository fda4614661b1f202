"""Shared fixtures: the real files in tests/data and generated demo projects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stacktools.demo import DemoProject, make_demo_project
from tests import helpers

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


@pytest.fixture
def run_cli():
    """Run the ``stacktools`` command in a subprocess (tests.helpers.run_cli)."""
    return helpers.run_cli
