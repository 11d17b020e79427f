"""The `detseg` command line: a thin layer over the Python API.

Each subcommand lives in its own module with a ``register(app)`` function. Modules keep their
top-level imports light (typer only) so that ``detseg --help`` is instant; heavy imports
happen inside the command bodies.
"""

from __future__ import annotations

import logging
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


DEBUG_ENV = "DETSEG_DEBUG"
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: a bug in detseg, not in the user's input


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """`--debug` anywhere on the command line (removed from it) or DETSEG_DEBUG=1."""
    rest = [a for a in argv if a != "--debug"]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return env or len(rest) != len(argv), rest


def _command_name(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-")][:2]
    return "detseg " + " ".join(words) if words else "detseg"


def _os_error_line(exc: OSError) -> str:
    """One line for an error of the operating system (disk full, permission denied, ...)."""
    where = exc.filename if exc.filename is not None else None
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{where}: {text}" if where is not None else text


def _show_library_messages(debug: bool) -> None:
    """Library code logs (it never prints); the command line shows those messages on stderr."""
    log = logging.getLogger("detseg")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("detseg: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


def _usage_line(exc: Exception) -> str:
    """A command-line usage error (bad option value, unknown option) as one line."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "detseg"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())
    return f"{command}: error: {message} (see '{command} --help')"


def main() -> None:
    """Entry point: errors become one clear line on stderr, never a traceback.

    A `DetsegError` (bad input, unusable model) exits with status 2, as does an error of the
    operating system (file missing, disk full, permission denied); anything else is a bug in
    detseg: one line naming the command and the exception, how to see the traceback
    (``--debug`` or ``DETSEG_DEBUG=1``), exit status 70.
    """
    # typer vendors click (typer._click): its usage errors are ClickException subclasses, and
    # with standalone_mode=False it returns exit codes (typer.Exit, Ctrl-C) instead of raising.
    from typer._click.exceptions import ClickException

    debug, argv = _debug_requested(sys.argv[1:])
    _show_library_messages(debug)
    try:
        rv = app(args=argv, prog_name="detseg", standalone_mode=False)
    except DetsegError as exc:
        if debug:
            raise
        print(f"detseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except ClickException as exc:
        if exc.format_message().strip():  # empty when the help was shown for no arguments
            print(_usage_line(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        _interrupted()
    except OSError as exc:
        if debug:
            raise
        print(f"detseg: error: {_os_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        print(f"detseg: error: {_command_name(argv)} ran out of memory", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        if debug:
            raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"detseg: internal error in `{_command_name(argv)}`: {type(exc).__name__}"
            f"{': ' + detail if detail else ''} (a bug in detseg; rerun with --debug or "
            f"{DEBUG_ENV}=1 for the traceback, and report it)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    if rv == 130:  # typer turns Ctrl-C into this return code
        _interrupted()
    if isinstance(rv, int) and rv:
        sys.exit(rv)
