"""What every ``tprune`` command shares: one parser class, one way to report a usage error, quiet output.

A usage error is one line on stderr and exit status 2 (never argparse's
usage dump and never a traceback); ``--help`` exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pytest_tprune.errors import EXIT_USAGE


class UsageExit(Exception):
    """argparse's usage error, turned into a return value instead of SystemExit."""


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors come back to :func:`parse_or_status` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageExit(message)


def parse_or_status(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status argparse chose (0 after --help, 2 for a usage error)."""
    try:
        return parser.parse_args(list(argv))
    except UsageExit as err:
        print(f"{parser.prog}: error: {err} (see '{parser.prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def fail(prog: str, message: str) -> int:
    """Say what was wrong in one line on stderr; the usage exit status."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def emit(text: str) -> None:
    """Write to stdout; a closed pipe (``| head``) is not an error worth a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
