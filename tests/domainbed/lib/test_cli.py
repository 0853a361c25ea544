"""The one error convention of the command lines (domainbed.lib.cli)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from domainbed.lib import cli


def test_a_usage_error_becomes_one_line_and_status_2(capsys):
    @cli.command("prog", usage_errors=(KeyError,))
    def main(argv):
        if argv == ["bad"]:
            raise cli.UsageError("--flag must be\n  positive")
        if argv == ["missing"]:
            raise KeyError("no such key")
        return 0

    assert main([]) == 0 and capsys.readouterr().err == ""
    assert main(["bad"]) == 2
    assert capsys.readouterr().err == "prog: error: --flag must be positive\n"
    assert main(["missing"]) == 2
    assert capsys.readouterr().err == "prog: error: 'no such key'\n"


def test_other_errors_are_not_disguised_as_usage_errors():
    @cli.command("prog")
    def main(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        main(None)


def test_parse_errors_are_one_line_with_status_2(capsys):
    parser = cli.OneLineParser(prog="prog")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "x"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("prog: error: argument --n") and line.endswith("(see --help)")


def test_every_command_raises_the_same_usage_error():
    # In a fresh interpreter: other tests re-import the engine's modules in this one.
    check = ("from domainbed.lib import cli; from domainbed.scripts import sweep, train; "
             "from domainbed_itl.scripts import compare_losses; "
             "assert sweep.UsageError is train.UsageError is compare_losses.UsageError "
             "is cli.UsageError")
    subprocess.run([sys.executable, "-c", check], check=True)
