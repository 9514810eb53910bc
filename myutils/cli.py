"""Running a command-line entry point: an error the user can fix is one ``error:`` line, not a traceback.

Every script ends with ``run(main)``. Library code raises :class:`InputError` (a ``ValueError``) for
bad files, flag values and checkpoints, or :class:`TrainingError` for a run that cannot go on (a NaN
loss); missing files raise the usual ``OSError`` subclasses. Those print
``error: <message>`` on stderr and exit with status 2. Anything else is a bug and keeps its traceback.
``ASCENSION_DEBUG=1`` or ``--debug`` shows the traceback for expected errors too. The argparse types
below reject out-of-range flag values before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

EXIT_USAGE = 2
DEBUG_FLAG = "--debug"


class InputError(ValueError):
    """Bad input the user can fix: a file, a flag value, a checkpoint of the wrong kind."""


class TrainingError(RuntimeError):
    """A run that cannot go on for a reason the user can act on (a NaN loss, a diverged optimizer)."""


EXPECTED_ERRORS = (
    InputError,
    TrainingError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def error_message(error: BaseException) -> str:
    """One line naming the file where an ``OSError`` carries one (``[Errno 2] ...`` reads badly)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def debug_requested(argv: Sequence[str]) -> bool:
    return os.environ.get("ASCENSION_DEBUG", "") not in ("", "0") or DEBUG_FLAG in argv


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> NoReturn:
    """Call ``main(argv)`` and exit: its int result (0 for anything else), or 2 after an expected error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        result = main(argv)
    except EXPECTED_ERRORS as error:
        if debug:
            raise
        print(f"error: {error_message(error)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def _number(kind: type, test: Callable[[float], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse ``type`` that parses ``kind`` and checks it: argparse then names the flag in its error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text}")
        return value

    parse.__name__ = requirement  # argparse shows the type's name when it cannot convert
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
unit_float = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """The flags of a script's Python function (``flag=value``) as its command line: ``True`` is a bare switch,
    ``None`` and ``False`` leave the flag out, a list or tuple gives several values. Checked by identity, since
    ``0 == False``: ``seed=0`` must reach the parser as ``--seed 0``."""
    argv: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{name}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{name}", *map(str, value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv
