"""`pip install .` and `pip install -e .` both give a working `stacktools` command."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _venv_with_current_deps(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # Reuse this environment's dependencies, so the test installs only stacktools itself;
    # link them without any installed stacktools, which would shadow the one under test.
    deps = tmp_path / "deps"
    deps.mkdir()
    for site_dir in dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()]):
        for entry in Path(site_dir).iterdir():
            if "stacktools" in entry.name or entry.suffix == ".pth" or (deps / entry.name).exists():
                continue
            (deps / entry.name).symlink_to(entry)
    (purelib / "_deps.pth").write_text(f"{deps}\n")
    return venv


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_pip_install_gives_working_cli(tmp_path: Path, editable: bool) -> None:
    venv = _venv_with_current_deps(tmp_path)
    # The new venv's own interpreter runs pip, so this environment is never touched.
    args = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
            "--ignore-installed"]
    args += ["-e", str(REPO)] if editable else [str(REPO)]
    res = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    if res.returncode != 0 and "Could not find a version" in res.stderr:
        pytest.skip("build backend not installable here: " + res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr
    exe = venv / "bin" / "stacktools"
    out = subprocess.run([str(exe), "size", "--box", "256", "--count", "1000000", "--json"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["formula_bytes"] == 263_296_000_000
    where = subprocess.check_output(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u, stacktools.cli.app as a; "
         "print(a.__file__); print(u.find_spec('cli') is None)"], text=True, cwd=tmp_path).split()
    if editable:
        assert Path(where[0]) == REPO / "cli" / "app.py"
    else:
        assert Path(where[0]).is_relative_to(venv)
    assert where[1] == "True", "a generic top-level 'cli' module must not be installed"
    # Every subpackage of the checkout is installed (setuptools lists them one by one).
    subpackages = sorted(".".join(p.parent.relative_to(REPO).parts)
                         for p in (REPO / "stacktools").rglob("__init__.py")
                         if p.parent != REPO / "stacktools" / "cli")
    res = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]",
                          *subpackages], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
