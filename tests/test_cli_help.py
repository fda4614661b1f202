"""Rendered ``--help``: every option's default and environment variable is shown.

Rich reads "[word…]" as a markup tag and drops it, so help text that states a
default in brackets used to vanish from the rendered help. These tests render
the real help of every command, as a user sees it on a wide terminal.
"""

from __future__ import annotations

import re
from enum import Enum

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text
from typer.core import TyperArgument, TyperOption

from stacktools.cli.app import app, literal_help
from tests.helpers import invoke_cli

_BRACKETED = re.compile(r"\[[^\[\]]*\]")


def _commands(cmd, path=()):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _render(path: tuple[str, ...]) -> str:
    res = invoke_cli(*path, "--help", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _rows(rendered: str) -> list[str]:
    """The rows of the help's panels, wrapped continuation lines joined, spaces collapsed."""
    rows: list[str] = []
    for line in rendered.splitlines():
        if not line.startswith("│"):
            continue
        cells = line.strip("│ ")
        if rows and not line[1:12].strip():  # nothing in the name column: a wrapped row
            rows[-1] += " " + cells
        else:
            rows.append(cells)
    return [" ".join(r.split()) for r in rows]


def _row(param, rows: list[str]) -> str:
    names = {*param.opts, *getattr(param, "secondary_opts", ())} if isinstance(param, TyperOption) \
        else {param.name}
    found = [r for r in rows if r.lstrip("* ").split()[0].rstrip(".") in names]
    assert len(found) == 1, (names, rows)
    return found[0]


def _shown(default) -> str:
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, (list, tuple)):
        return ", ".join(map(_shown, default))
    return str(default)


def _expected(param) -> list[str]:
    """What the row of ``param`` must contain."""
    want = []
    has_value_default = param.default is not None and param.show_default is not False
    if isinstance(param, TyperOption) and param.is_flag:
        if has_value_default and param.secondary_opts:  # --x/--no-x names its default
            want.append("[default: ")
    elif has_value_default and not param.required:
        want.append(f"[default: {_shown(param.default)}]")
    if getattr(param, "envvar", None):
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        want.append(f"[env var: {', '.join(envvars)}]")
    # Whatever the help states in brackets ("[default: 30, $STACKTOOLS_…]") is shown as
    # written (the help here has been through literal_help: undo its escapes).
    written = (param.help or "").replace("\\[", "[")
    want += [" ".join(m.split()) for m in _BRACKETED.findall(written)]
    return want


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "stacktools")
def test_help_shows_every_default_and_env_var(path: tuple[str, ...]) -> None:
    rows = _rows(_render(path))
    for param in COMMANDS[path].params:
        if not isinstance(param, (TyperOption, TyperArgument)) or param.hidden \
                or "--help" in getattr(param, "opts", ()):
            continue
        row = _row(param, rows)
        for text in _expected(param):
            assert text in row, f"{' '.join(path)} {param.name}: {text!r} not in {row!r}"


def test_the_help_states_defaults_that_markup_used_to_hide() -> None:
    """The walk above really meets the run-time defaults written in help text."""
    stated = [(path, p.name) for path, cmd in COMMANDS.items() for p in cmd.params
              if "[default: " in (p.help or "")]
    assert len(stated) >= 10, stated
    for name in ("ssd_path", "quota_mb", "reserve_mb", "lifetime_days", "threads", "config"):
        assert (("cache", "sync"), name) in stated
    for path, name in ((("cs", "show"), "fields"), (("cs", "dedupe"), "by"),
                       (("cs", "from-star"), "uid_column"), (("size",), "project_dir")):
        assert (path, name) in stated


@given(st.text(alphabet="ab Z[]/#@:=$.,"))
def test_literal_help_renders_as_written(text: str) -> None:
    """No markup tag survives escaping (emoji codes such as ":a:" are another matter)."""
    assert Text.from_markup(literal_help(text), emoji=False).plain == text


def test_literal_help_leaves_escaped_text_alone() -> None:
    assert literal_help(r"each \[\[node]]") == r"each \[\[node]]"
    assert literal_help(None) is None
