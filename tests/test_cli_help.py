"""Rendered ``--help``: every option's default and environment variable is shown.

These tests render the real help of every command, as a user sees it on a wide
terminal, and walk the same command tree the root builds lazily.
"""

from __future__ import annotations

import re
from enum import Enum

import pytest
import typer
from typer.core import TyperArgument, TyperOption

from stacktools.cli.app import COMMANDS as ROOT_COMMANDS
from stacktools.cli.app import app, build_command
from tests.helpers import invoke_cli

_BRACKETED = re.compile(r"\[[^\[\]]*\]")
_SECTIONS = ("Arguments:", "Options:")


def _commands(cmd, path=()):
    yield path, cmd
    subs = {n: build_command(n) for n in ROOT_COMMANDS} if not path else getattr(cmd, "commands", {})
    for name, sub in sorted(subs.items()):
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _render(path: tuple[str, ...]) -> str:
    res = invoke_cli(*path, "--help", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _rows(rendered: str) -> list[tuple[set[str], str]]:
    """The rows of the help's Arguments and Options: (the row's names, its text).

    A row starts in column 3; its names run up to the first gap of two spaces;
    wrapped lines are joined and spaces collapsed.
    """
    rows: list[tuple[set[str], str]] = []
    section = None
    for line in rendered.splitlines():
        if line and not line.startswith(" "):
            section = line.strip()
        elif section in _SECTIONS and re.match(r"^  \S", line):
            head = re.split(r"\s{2,}", line.strip())[0]
            names = {t.strip(",").removesuffix("...") for t in head.split()}
            rows.append((names, line.strip()))
        elif section in _SECTIONS and line.strip() and rows:
            rows[-1] = (rows[-1][0], rows[-1][1] + " " + line.strip())
    return [(names, " ".join(text.split())) for names, text in rows]


def _row(param, rows: list[tuple[set[str], str]]) -> str:
    names = {*param.opts, *getattr(param, "secondary_opts", ())} if isinstance(param, TyperOption) \
        else {param.name}
    found = [text for row_names, text in rows if row_names & names]
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
        # Click joins a range to the default: "[default: 4; x>=1]".
        want.append(f"[default: {_shown(param.default)}")
    if getattr(param, "envvar", None):
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        want.append(f"[env var: {', '.join(envvars)}]")
    # Whatever the help states in brackets ("[default: 30, $STACKTOOLS_…]") is shown as written.
    written = param.help or ""
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
            # A default ends at "]" or at the range that Click appends after ";".
            pattern = re.escape(text) + (r"[\];]" if text.startswith("[default: ") and text[-1] not in "] "
                                         else "")
            assert re.search(pattern, row), f"{' '.join(path)} {param.name}: {text!r} not in {row!r}"


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


def test_the_root_lists_each_command_with_its_own_help() -> None:
    """The root's table of commands (which lets it start without importing them) matches them."""
    rendered = _render(())
    for name, (_, _, short) in ROOT_COMMANDS.items():
        own = " ".join((build_command(name).help or "").split("\n\n")[0].split())
        assert own.startswith(short.rstrip(".")), (name, short, own)
        assert name in rendered
