"""How every command line of the project fails on input the user must change.

Library functions raise `UsageError` (or a subclass: every error type that means "input the
user must change" is one), never print or exit; the command's `main(argv) -> int` is wrapped by
`command`, which turns such an error into one line, `prog: error: message`, on stderr and exit
status 2, and a `Failure` (the machine or a step it ran failed, not the input) into the same
line with exit status 1. `main` returns its status rather than exiting, so a program (the demo)
or a test can call it. Argument-parsing errors take the same one-line form through
`OneLineParser`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import unicodedata
from collections.abc import Callable
from typing import NoReturn, TextIO

from domainbed.lib import io_errors

Main = Callable[[list[str] | None], int]


class UsageError(Exception):
    """Input the user must change; the message says what to change."""


class Failure(Exception):
    """Something other than the input failed (a subprocess, the disk); the message says what,
    and what to do once it is fixed."""


def print_error(prog: str, message: str) -> None:
    """`prog: error: message` on stderr, on one line whatever the message's line breaks."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def command(prog: str, usage_errors: tuple[type[Exception], ...] = ()) -> Callable[[Main], Main]:
    """Decorator for a command's `main`: a UsageError, or one of `usage_errors` (a library's
    own error types for bad input), becomes one line on stderr and exit status 2; a Failure,
    or a write the machine refused (a full disk, a read-only mount: `io_errors.is_refusal`),
    one line and 1.

    The message is printed before sys.stdout / sys.stderr are put back as `main` found them,
    so a command that copies its streams into a log (train's err.txt) logs its error too. The
    wrapped function carries `prog` as `command_prog`: tests read it to check that every
    command is wrapped."""
    caught = (UsageError, *usage_errors)

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            streams = sys.stdout, sys.stderr
            try:
                return main(argv)
            except caught as err:
                print_error(prog, str(err))
                return 2
            except Failure as err:
                print_error(prog, str(err))
                return 1
            except OSError as err:
                if not io_errors.is_refusal(err):
                    raise
                print_error(prog, io_errors.describe(err))
                return 1
            finally:
                _restore(*streams)

        run.command_prog = prog  # type: ignore[attr-defined]
        return run

    return decorate


def _restore(stdout: TextIO, stderr: TextIO) -> None:
    """Close the streams a command installed in place of sys.stdout / sys.stderr (train's
    copies into its log), and put the original ones back."""
    for installed, original in ((sys.stdout, stdout), (sys.stderr, stderr)):
        if installed is not original and hasattr(installed, "close"):
            installed.close()
    sys.stdout, sys.stderr = stdout, stderr


def path_arg(value: str) -> str:
    """argparse `type=` of every path flag: refuse a path holding a control character.

    A newline, tab or escape in a path is almost always a pasting accident, and it reaches
    places that cannot hold one: a launcher's job script (`#SBATCH --error=...` split over two
    lines), a log line, a table. So such a path is refused as the arguments are parsed, before
    any command or launcher sees it."""
    bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(
            f"the path {value!r} holds the control character {bad!r}; give a path without "
            "control characters (newline, tab, escape, ...)")
    return value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: message (see --help)`), not
    the usage block, and still exit 2 as argparse's do."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
