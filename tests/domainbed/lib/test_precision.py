"""The one-line warning for --precision bf16 on a CPU without bf16 units."""

from __future__ import annotations

import pytest

from domainbed.lib import precision

AVX2_ONLY = ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
             "processor\t: 1\nflags\t\t: fpu avx2\n")
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the module at a cpuinfo file the test writes; start with no warning given."""
    path = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", path)
    monkeypatch.delenv(precision.BF16_WARNED, raising=False)
    return path


def test_bf16_on_a_cpu_without_bf16_units_warns_once(cpuinfo, capsys):
    cpuinfo.write_text(AVX2_ONLY)
    assert precision.cpu_flags() == {"fpu", "sse2", "avx", "avx2", "fma"}
    precision.warn_if_bf16_is_slow("bf16", "prog", "cpu")
    precision.warn_if_bf16_is_slow("bf16", "prog", "cpu")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("prog: warning:") and "--precision fp32" in line


@pytest.mark.parametrize("info,asked,device", [
    (AVX2_ONLY, "fp32", "cpu"),  # fp32 asked for
    (AVX2_ONLY, "bf16", "cuda"),  # a GPU has bf16 units
    (WITH_AMX, "bf16", "cpu"),
    (None, "bf16", "cpu"),  # no /proc/cpuinfo: nothing known, nothing claimed
])
def test_no_warning_where_bf16_is_fine_or_unknown(cpuinfo, capsys, info, asked, device):
    if info is not None:
        cpuinfo.write_text(info)
    precision.warn_if_bf16_is_slow(asked, "prog", device)
    assert capsys.readouterr().err == ""


def test_child_processes_of_a_warned_command_stay_quiet(cpuinfo, capsys, monkeypatch):
    cpuinfo.write_text(AVX2_ONLY)
    monkeypatch.setenv(precision.BF16_WARNED, "1")
    precision.warn_if_bf16_is_slow("bf16", "prog", "cpu")
    assert capsys.readouterr().err == ""
