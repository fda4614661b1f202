"""What the CLI imports to start: only the invoked command, and nothing heavy.

Start-up is most of the time of `--help` and of formula-mode `size`, so these tests
check which modules a run imports (not how long it takes: timing is for
benchmarks/bench_startup.py).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from stacktools.cli.app import COMMANDS

HEAVY = ("numpy", "pandas", "mrcfile", "starfile", "matplotlib", "pyarrow", "cryosparc")
# Help is plain Click text: no rich (its Markdown renderer pulls in markdown_it and
# pygments), no pydantic (Typer releases from 0.29 build an adapter per parameter).
RENDERING = ("rich", "markdown_it", "pygments", "pydantic", "attr", "email")


def _imported(*argv: str) -> set[str]:
    """The modules a real ``stacktools ARGV`` process has imported when it exits."""
    code = ("import os, sys; sys.argv = ['stacktools', *sys.argv[1:]]\n"
            "from stacktools.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "os.write(2, ('\\n@' + ' '.join(sorted(sys.modules))).encode())\n")
    err = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True).stderr
    return set(err.rsplit("\n@", 1)[1].split())


def _tops(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_cli_import_is_light() -> None:
    mods = _imported("--version-does-not-exist")
    assert not _tops(mods) & set(HEAVY), _tops(mods) & set(HEAVY)


def test_formula_mode_needs_no_numpy_and_no_rich() -> None:
    tops = _tops(_imported("size", "--box", "2", "--count", "3"))
    assert not tops & {*HEAVY, *RENDERING}, tops & {*HEAVY, *RENDERING}


def test_the_root_help_builds_no_command() -> None:
    mods = _imported("--help")
    assert not _tops(mods) & {*HEAVY, *RENDERING}
    built = {m for m in mods if m.startswith("stacktools.cli.")} - {"stacktools.cli.app", "stacktools.cli.options"}
    assert not built, built


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_help_imports_that_command_only(name: str) -> None:
    mods = _imported(name, "--help")
    assert not _tops(mods) & {*HEAVY, *RENDERING}, _tops(mods) & {*HEAVY, *RENDERING}
    own = COMMANDS[name][0]
    assert own in mods
    others = {m for _, (m, _, _) in COMMANDS.items() if m != own}
    assert not mods & others, mods & others
