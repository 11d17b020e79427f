"""The `detseg` command line: a thin layer over the Python API.

Each subcommand lives in its own module with a ``register(app)`` function. Modules keep their
top-level imports light (typer only) so that ``detseg --help`` is instant; heavy imports
happen inside the command bodies.
"""

from __future__ import annotations

import os
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
    from detseg.pipeline.session import _ort, probe_cuda

    ort = _ort()
    print(f"detseg {__version__}, onnxruntime {ort.__version__}")
    cuda = probe_cuda()
    print("CUDA: usable" if cuda is None else f"CUDA: not usable ({cuda}); --device auto runs on CPU")


def _register() -> None:
    from detseg.cli import data, eval, export, predict, segment, serve

    for module in (predict, eval, export, serve, data, segment):
        module.register(app)


_register()


def _interrupted() -> None:
    """Exit 130 at once after Ctrl-C.

    Whatever must survive (the predict journal) is closed by now. Skipping interpreter
    finalisation avoids onnxruntime thread pools being torn down mid-shutdown, which aborted
    the process ("terminate called without an active exception") about one time in four.
    """
    print("detseg: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    """Entry point: a `DetsegError` becomes one clear line on stderr and exit status 2."""
    # typer vendors click (typer._click): its usage errors are ClickException subclasses, and
    # with standalone_mode=False it returns exit codes (typer.Exit, Ctrl-C) instead of raising.
    from typer._click.exceptions import ClickException

    try:
        rv = app(standalone_mode=False)
    except DetsegError as exc:
        print(f"detseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        _interrupted()
    if rv == 130:  # typer turns Ctrl-C into this return code
        _interrupted()
    if isinstance(rv, int) and rv:
        sys.exit(rv)
