"""The root ``stacktools`` command: a table of commands, each built only when invoked.

Start-up is most of the time of a short command, so the root knows its commands
by name and one-line help (:data:`COMMANDS`) and imports a command's module, and
builds its Click object, only when that command runs or its help is shown. Help
is rendered by Click as plain text (Typer's rich mode would import rich's
Markdown renderer, and with it ``markdown_it`` and ``pygments``, for every help).

Errors from bad input (any :class:`stacktools.errors.StacktoolsError`, and
``OSError``) print one line on stderr and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

from stacktools.cli.options import cli_app

# name -> (module, attribute, one-line help). The attribute is a command function
# or a Typer app of subcommands. The help here is what `stacktools --help` lists;
# tests/test_cli_help.py checks it against each command's own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "size": ("stacktools.cli.size", "size", "Report how big a particle dataset is."),
    "demo": ("stacktools.cli.demo", "demo",
             "Make a small CryoSPARC-shaped project and run size → consolidate → cache on it."),
    "consolidate": ("stacktools.cli.consolidate", "consolidate",
                    "Write stacks holding only the selected particles, plus a .cs (or STAR) that points at them."),
    "verify": ("stacktools.cli.consolidate", "verify",
               "Check every particle and field of a consolidated set against its source set."),
    "check": ("stacktools.cli.check", "check", "Read every selected particle once and report the corrupt ones."),
    "cs": ("stacktools.cli.cs", "app", "Inspect, filter, join, combine and convert .cs files."),
    "cache": ("stacktools.cli.cache", "app", "Manage a node-local SSD particle cache."),
}

# Plain-text help up to this width (Click's default is 80 columns).
HELP_WIDTH = 120


def build_command(name: str):
    """The Click command (or group) ``name`` of :data:`COMMANDS`, built now.

    Args:
        name: A key of :data:`COMMANDS`.

    Returns:
        A ``click.Command``; a ``click.Group`` for ``cs`` and ``cache``.
    """
    module, attr, _ = COMMANDS[name]
    target = getattr(importlib.import_module(module), attr)
    if isinstance(target, typer.Typer):
        cmd = typer.main.get_group(target)
    else:
        one = cli_app()
        one.command(name)(target)
        cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


class LazyGroup(TyperGroup):
    """The root group: lists :data:`COMMANDS` without importing them."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        return build_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


app = typer.Typer(
    cls=LazyGroup,
    name="stacktools",
    help="Size, consolidate, manipulate and cache cryo-EM particle stacks "
         "(CryoSPARC .cs files, RELION STAR files and the MRC stacks they point into).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": HELP_WIDTH},
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


EXIT_BAD_INPUT = 2


def main() -> None:
    """Console-script entry point."""
    from stacktools.errors import StacktoolsError
    try:
        app()
    except (StacktoolsError, OSError) as err:
        if _state["debug"]:  # our errors arise in commands, after the root callback ran
            raise
        sys.stderr.write(f"stacktools: error: {_one_line(err)}\n")
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        sys.stderr.write("stacktools: interrupted\n")
        sys.exit(130)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError):
        from stacktools.errors import describe_os_error
        return describe_os_error(err)
    from stacktools.cli.options import FLAGS
    return " ".join(err.message_with(FLAGS).split())


if __name__ == "__main__":
    main()
