"""Errors that name the option avoiding them, spelled per front end."""

from __future__ import annotations

import pickle

from stacktools.cli.options import FLAGS
from stacktools.errors import Hint, ModeMismatchError, OutputError, OutputExistsError, StackError


def test_hint_is_spelled_as_keyword_or_flag():
    # Braces in a path are text, never a format field.
    err = OutputExistsError("/data/{run}/J8: already exists", hints=[Hint("force", " (use {} to overwrite)")])
    assert isinstance(err, OutputError)
    assert str(err) == "/data/{run}/J8: already exists (use force=True to overwrite)"
    assert err.message_with(FLAGS) == "/data/{run}/J8: already exists (use --force to overwrite)"
    mode = ModeMismatchError("a.cs: mixed modes", hints=[Hint("dtype", "; use {}", "float32")])
    assert isinstance(mode, StackError)
    assert str(mode) == "a.cs: mixed modes; use dtype='float32'"
    assert mode.message_with(FLAGS) == "a.cs: mixed modes; use --dtype float32"
    named = OutputError("x", hints=[Hint("project_dir", "; set it with {}", None)])
    assert str(named) == "x; set it with project_dir"
    assert named.message_with(FLAGS) == "x; set it with --project-dir"


def test_hinted_error_survives_pickling():
    err = OutputExistsError("x: already exists", hints=[Hint("force", " (use {})")])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is OutputExistsError and str(back) == str(err)


def test_every_hinted_option_has_a_flag():
    # An option the library hints at must exist on the command line under the name FLAGS gives.
    import subprocess
    import sys
    helps = subprocess.run([sys.executable, "-m", "stacktools.cli.app", "consolidate", "--help"],
                           capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    for option in ("force", "dtype", "project_dir", "passthrough", "allow_outside_project"):
        assert FLAGS[option] in helps, option
