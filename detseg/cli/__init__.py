"""The `detseg` command line: a thin layer over the Python API.

Each subcommand lives in its own module with a ``register(app)`` function. Modules keep their
top-level imports light (typer only) so that ``detseg --help`` is instant; heavy imports
happen inside the command bodies.
"""

from __future__ import annotations

import sys

import typer

from detseg.errors import DetsegError

app = typer.Typer(
    name="detseg",
    help="Export detectors and segmenters to ONNX, run them fast, measure them exactly, demo them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print detseg's version and the onnxruntime providers this machine can really use."""
    from detseg import __version__

    print(f"detseg {__version__}")


def _register() -> None:
    from detseg.cli import data, eval, export, predict, serve

    for module in (predict, eval, export, serve, data):
        module.register(app)


_register()


def main() -> None:
    """Entry point: a `DetsegError` becomes one clear line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except DetsegError as exc:
        print(f"detseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("detseg: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("detseg: aborted", file=sys.stderr)
            sys.exit(1)
        raise
