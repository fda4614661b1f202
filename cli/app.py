"""The root ``stacktools`` Typer app and its error handling.

Errors from bad input (any :class:`stacktools.errors.StacktoolsError`, and
``OSError``) print one line on stderr and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import sys

import typer

from . import cache as _cache
from . import consolidate as _consolidate
from . import cs as _cs
from . import demo as _demo
from . import size as _size

app = typer.Typer(
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
    return " ".join(str(err).split())


if __name__ == "__main__":
    main()
