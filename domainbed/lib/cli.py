"""How every command line of the project fails on input the user must change.

Library functions raise `UsageError` (or an error type of their own, named by the command),
never print or exit; the command's `main(argv) -> int` is wrapped by `command`, which turns
such an error into one line, `prog: error: message`, on stderr and exit status 2. `main`
returns its status rather than exiting, so a program (the demo) or a test can call it.
Argument-parsing errors take the same one-line form through `OneLineParser`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn

Main = Callable[[list[str] | None], int]


class UsageError(Exception):
    """Input the user must change; the message says what to change."""


def print_error(prog: str, message: str) -> None:
    """`prog: error: message` on stderr, on one line whatever the message's line breaks."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def command(prog: str, usage_errors: tuple[type[Exception], ...] = ()) -> Callable[[Main], Main]:
    """Decorator for a command's `main`: a UsageError, or one of `usage_errors` (a library's
    own error types for bad input), becomes one line on stderr and exit status 2."""
    caught = (UsageError, *usage_errors)

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except caught as err:
                print_error(prog, str(err))
                return 2

        return run

    return decorate


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: message (see --help)`), not
    the usage block, and still exit 2 as argparse's do."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
