"""The root ``stacktools`` Typer app and its error handling.

Errors from bad input (any :class:`stacktools.errors.StacktoolsError`, and
``OSError``) print one line on stderr and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import re
import sys

import typer
from typer.core import TyperGroup

from stacktools.cli import cache as _cache
from stacktools.cli import check as _check
from stacktools.cli import consolidate as _consolidate
from stacktools.cli import cs as _cs
from stacktools.cli import demo as _demo
from stacktools.cli import size as _size

# Rich reads "[word…]" as a markup tag and drops it, which hid every "[default: …]"
# written in help text. Help is plain text here: every "[" that would open a tag
# is escaped once, for the whole command tree (same rule as rich.markup.escape,
# without importing rich at start-up). Already escaped text is left alone.
_MARKUP_TAG_OPEN = re.compile(r"(?<!\\)\[(?=[a-z#/@])")


def literal_help(text: str | None) -> str | None:
    """Escape ``text`` so that rich shows it as written.

    Args:
        text: Help text of a command or parameter, or None.

    Returns:
        The text with each unescaped ``[`` that would open a rich markup tag
        preceded by a backslash; None stays None.
    """
    return None if text is None else _MARKUP_TAG_OPEN.sub(r"\\[", text)


class _LiteralHelpGroup(TyperGroup):
    """The root group: makes the help of every command and parameter below it literal."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        _make_help_literal(self)


def _make_help_literal(cmd) -> None:
    for c in (cmd, *getattr(cmd, "params", ())):
        for attr in ("help", "short_help", "epilog"):
            if isinstance(getattr(c, attr, None), str):
                setattr(c, attr, literal_help(getattr(c, attr)))
    for sub in getattr(cmd, "commands", {}).values():
        _make_help_literal(sub)


app = typer.Typer(
    cls=_LiteralHelpGroup,
    name="stacktools",
    help="Size, consolidate, manipulate and cache cryo-EM particle stacks "
         "(CryoSPARC .cs files and the MRC stacks they point into).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


app.command("size")(_size.size)
app.command("demo")(_demo.demo)
app.command("consolidate")(_consolidate.consolidate)
app.command("verify")(_consolidate.verify)
app.command("check")(_check.check)
app.add_typer(_cs.app, name="cs")
app.add_typer(_cache.app, name="cache")

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
