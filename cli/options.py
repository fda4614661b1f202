"""Options shared by several commands."""

from __future__ import annotations

import typer

# How the command line spells each library option that an error may hint at.
FLAGS = {
    "overwrite": "--force",
    "force": "--force",
    "dtype": "--dtype",
    "allow_outside_project": "--allow-outside-project",
    "project_dir": "--project-dir",
    "passthrough": "--passthrough",
    "max_files": "--max-files",
    "into": "--into",
    "psize": "--psize",
    "box": "--box",
    "micrograph_shape": "--micrograph-shape",
    "allow_premultiplied": "--allow-premultiplied",
    "link_mrcs": "--link-mrcs",
    "crop": "--crop",
    "fourier_crop": "--fourier-crop",
}

ALLOW_OUTSIDE_PROJECT = typer.Option(
    False, "--allow-outside-project",
    help="Accept blob/path values that are absolute or lead outside the project directory "
         "(imports that really point elsewhere). Default: off, such a path is an error.")

# The default project directory, as ParticleSet.open decides it (particles.default_project_dir).
PROJECT_DIR_DEFAULT = ("for a .cs, the parent of its job directory (P1/J7/x.cs: P1); for a RELION "
                       "STAR, the directory above its Type/jobNNN/ job directory "
                       "(proj/Extract/job012/particles.star: proj), else the current directory")
PROJECT_DIR_HELP = ("Project directory that blob/path (CryoSPARC) or rlnImageName (RELION) is relative to "
                    f"[default: {PROJECT_DIR_DEFAULT}].")


def cli_app(**kw) -> typer.Typer:
    """A Typer app with the settings every stacktools command group shares."""
    kw.setdefault("no_args_is_help", True)
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None, **kw)


CS_FORMAT = typer.Option(
    None, "--format", help="Format of the .cs written: numpy or csdat. "
                           "[default: the input's format]",
    case_sensitive=False, show_default=False)


def cs_format(value: str | None) -> str | None:
    """The ``--format`` value, checked; ``None`` keeps the input's format."""
    if value is None:
        return None
    value = value.lower()
    if value not in ("numpy", "csdat"):
        raise typer.BadParameter(f"{value!r}: choose numpy or csdat", param_hint="--format")
    return value


DASK = typer.Option(
    None, "--dask", metavar="ADDRESS",
    help="Run on a Dask cluster (pip install 'stacktools[dask]'), one task per stack: local:N for N "
         "worker processes here, a scheduler file (dask scheduler --scheduler-file), or a scheduler "
         "address (tcp://host:8786); workers must see the same paths [default: this process].")


def dask_client(address: str | None):
    """A context giving a ``distributed.Client`` for ``--dask ADDRESS``, or None without it."""
    import contextlib

    if address is None:
        return contextlib.nullcontext(None)
    from stacktools.api import connect_cluster
    return connect_cluster(address)
