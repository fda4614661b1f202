"""The notebooks run top to bottom on the demo project and draw real figures."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install '.[notebooks]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install '.[notebooks]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install '.[notebooks]')")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install '.[notebooks]')")


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


def test_cache_planning_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOKS / "cache_planning.ipynb", as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None


def test_cache_planning_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel builds the demo projects there
    nb = nbformat.read(NOTEBOOKS / "cache_planning.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Per-stack use, footprint, the queue, and the choices against each node: four real PNG figures.
    assert len(_outputs(nb, "image/png")) >= 4
    # The choices table names the shrink rows that `cache plan` prints.
    assert any("Fourier-cropped to" in o["data"]["text/html"] for o in _outputs(nb, "text/html"))
    tables = [o["data"]["text/html"] for o in _outputs(nb, "text/html")]
    assert any("bytes_to_copy" in t and "gpu0" in t for t in tables)  # the placement table
