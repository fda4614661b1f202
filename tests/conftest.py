"""Shared fixtures: the real files in ../shared/data and generated demo projects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stacktools.demo import DemoProject, make_demo_project

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real CryoSPARC and RELION files."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


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
