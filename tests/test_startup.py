"""The CLI imports its heavy dependencies only in the commands that need them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "pandas", "mrcfile", "starfile", "matplotlib", "pyarrow", "cryosparc")


def _imported(code: str) -> set[str]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                         capture_output=True, text=True, check=True).stderr
    return {line.split("|")[-1].strip().split(".")[0] for line in err.splitlines()
            if line.startswith("import time:")}


def test_cli_import_is_light() -> None:
    mods = _imported("import stacktools.cli.app")
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_formula_mode_needs_no_numpy() -> None:
    mods = _imported("import sys; sys.argv = ['stacktools', 'size', '--box', '2', '--count', '3'];"
                     "from stacktools.cli.app import main; main()")
    assert not mods & set(HEAVY), mods & set(HEAVY)
