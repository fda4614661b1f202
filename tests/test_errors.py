"""Errors that name the option avoiding them, spelled per front end."""

from __future__ import annotations

import pickle

from stacktools.cli.app import cli_option

from stacktools.errors import (
    ModeMismatchError,
    OutputError,
    OutputExistsError,
    StackError,
)


def test_hint_is_spelled_as_keyword_or_flag():
    # Braces in a path are text, never a format field.
    err = OutputExistsError("/data/{run}/J8: already exists", " (use {force} to overwrite)",
                            force=True)
    assert isinstance(err, OutputError)
    assert str(err) == "/data/{run}/J8: already exists (use force=True to overwrite)"
    assert err.spelled(cli_option) == "/data/{run}/J8: already exists (use --force to overwrite)"
    mode = ModeMismatchError("a.cs: mixed modes", "; use {dtype}", dtype="float32")
    assert isinstance(mode, StackError)
    assert str(mode) == "a.cs: mixed modes; use dtype='float32'"
    assert mode.spelled(cli_option) == "a.cs: mixed modes; use --dtype float32"


def test_hinted_error_survives_pickling():
    err = OutputExistsError("x: already exists", " (use {force})", force=True)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is OutputExistsError and str(back) == str(err)


def test_cli_option_spelling():
    assert cli_option("allow_outside_project", True) == "--allow-outside-project"
    assert cli_option("particles_per_stack", 500) == "--particles-per-stack 500"
