"""The ``tregpd`` command line.

Subcommands are contributed by modules listed in :data:`COMMAND_MODULES`; each defines
``register(subparsers)`` that adds its parsers and sets ``func`` (a callable taking the parsed ``args`` and
returning an exit code). User errors (:class:`TregpdError`) print one line naming the problem and exit with
status 2, without a traceback.

Building the parser imports only the ``cli`` modules, which import nothing heavy at module level (numba, numpy,
pandas, matplotlib, scipy, lmfit, dask are imported inside the command functions), so that ``tregpd --help`` and
argument errors answer at once; ``tests/test_cli.py::test_parser_imports_nothing_heavy`` checks it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from tregpd.errors import TregpdError

COMMAND_MODULES = (
    "tregpd.model.cli",
    "tregpd.model.models_cli",
    "tregpd.fitting.calibrate",
    "tregpd.fitting.cli",
    "tregpd.fitting.validate_cli",
    "tregpd.fitting.hypotheses_cli",
    "tregpd.fitting.variability_cli",
    "tregpd.scenarios.cli",
    "tregpd.scenarios.scale_cli",
    "tregpd.pipeline",
    "tregpd.report",
    "tregpd.rundir",
)


class _VersionAction(argparse.Action):
    """``--version``: reads the package metadata only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from tregpd import __version__
        print(f"tregpd {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tregpd",
        description="Th17/Treg PK/PD simulator for refractory SLE under low-dose IL-2 and rapamycin.")
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subcommand module not present in this build
                continue
            raise
        mod.register(sub)
    return parser


def _check_outputs(args) -> None:
    """Resolve every output path the user named before any work starts (:func:`tregpd.safeio.resolve_output`).

    ``--out`` is a folder unless the command set ``out_kind="file"`` (``tregpd sbml``)."""
    out = getattr(args, "out", None)
    if out is None or not isinstance(out, (str, os.PathLike)):
        return
    from tregpd.safeio import resolve_output
    kind = getattr(args, "out_kind", "dir")
    resolve_output(out, kind=kind, what="--out file" if kind == "file" else "--out folder")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _handle_sigterm():
    """SIGTERM is handled like SIGINT (KeyboardInterrupt: the interrupted path, exit 130, temporary files
    removed by the atomic writers). Returns the previous handler, or None where none could be installed
    (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except (ValueError, OSError):  # pragma: no cover
        return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    previous = _handle_sigterm()
    from tregpd import rundir
    rundir.reset_events()
    import warnings
    shown = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"tregpd {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    try:
        _check_outputs(args)
        return int(args.func(args) or 0)
    except TregpdError as exc:
        print(f"tregpd {args.command}: error: {exc}{rundir.incomplete_note()}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable/occupied output path, disk full, ...: one line naming what and where
        from tregpd.safeio import describe_os_error
        print(f"tregpd {args.command}: error: {describe_os_error(exc)}{rundir.incomplete_note()}",
              file=sys.stderr)
        return 2
    except MemoryError as exc:
        from tregpd.safeio import describe_memory_error
        print(f"tregpd {args.command}: error: {describe_memory_error(exc, args.command)}"
              f"{rundir.incomplete_note()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tregpd {args.command}: interrupted; {rundir.interrupt_message()}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
