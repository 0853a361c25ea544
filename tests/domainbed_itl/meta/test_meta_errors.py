"""Bad input to the meta-learning and plotting commands and to the download command: one line
saying what to do, a non-zero exit, nothing written, and no data loaded first.

Most cases point --data_dir at a directory without data: had the command reached the data, it
would have stopped with a different message, so the one asserted here was checked before.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from domainbed.scripts import download
from domainbed_itl.scripts import meta_cmaes, meta_train, plot_losses


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a directory\n")
    return path


def _meta_train(tmp_path, out, *extra) -> int:
    return meta_train.main(["--data_dir", str(tmp_path / "no_data"), "--output_dir", str(out),
                            *extra])


def _cmaes(tmp_path, out, *extra) -> int:
    return meta_cmaes.main(["--data_dir", str(tmp_path / "no_data"), "--output_dir", str(out),
                       "--budget", "100", *extra])


@pytest.mark.parametrize("command", [_meta_train, _cmaes])
@pytest.mark.parametrize("below", [False, True])
def test_an_output_dir_that_is_or_lies_below_a_file_is_refused(
        tmp_path, capsys, a_file, command, below):
    out = a_file / "sub" if below else a_file
    assert command(tmp_path, out) == 2
    line = _one_line(capsys)
    assert f"--output_dir {out}" in line
    assert ("lies below the file" if below else "is a file") in line
    assert a_file.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", [_meta_train, _cmaes])
def test_an_unknown_dataset_is_refused_before_loading(tmp_path, capsys, command):
    assert command(tmp_path, tmp_path / "out", "--dataset", "RotatedMNISt") == 2
    line = _one_line(capsys)
    assert "unknown --dataset 'RotatedMNISt'" in line and "RotatedMNIST" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [_meta_train, _cmaes])
@pytest.mark.parametrize("content", ["{broken", json.dumps({"itl_omega": 5}),
                                     json.dumps(["a"] * 12), json.dumps({"lr": 1}),
                                     json.dumps([True] * 12)])
def test_a_malformed_init_file_is_refused_before_loading(tmp_path, capsys, command, content):
    init = tmp_path / "init.json"
    init.write_text(content)
    assert command(tmp_path, tmp_path / "out", "--init", str(init)) == 2
    line = _one_line(capsys)
    assert f"--init '{init}' holds no" in line and "JSON list of numbers" in line
    assert not (tmp_path / "out").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_garbage(path: Path, marker: Path) -> None:
    path.write_bytes(b"\x00not a checkpoint" * 10)


def _write_truncated(path: Path, marker: Path) -> None:
    torch.save({"config": {}, "w": torch.zeros(12)}, path)
    path.write_bytes(path.read_bytes()[:-40])


def _write_tensor(path: Path, marker: Path) -> None:
    torch.save(torch.zeros(3), path)


def _write_incomplete(path: Path, marker: Path) -> None:
    torch.save({"config": {}, "w": torch.zeros(12)}, path)


def _write_payload(path: Path, marker: Path) -> None:
    torch.save({"config": _Payload(marker)}, path, pickle_module=pickle)


@pytest.mark.parametrize("write", [_write_garbage, _write_truncated, _write_tensor,
                                   _write_incomplete, _write_payload])
def test_a_corrupt_meta_checkpoint_is_refused_in_one_line(tmp_path, capsys, write):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "pwned"
    write(out / "checkpoint.pt", marker)
    before = (out / "checkpoint.pt").read_bytes()
    assert _meta_train(tmp_path, out) == 2
    line = _one_line(capsys)
    assert "checkpoint.pt is damaged or not a checkpoint of this program" in line
    assert "choose a new --output_dir" in line
    assert not marker.exists()
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]
    assert (out / "checkpoint.pt").read_bytes() == before


def test_plot_losses_refuses_an_unwritable_destination_and_writes_a_good_one(
        tmp_path, capsys, a_file):
    for out, message in ((a_file / "fig.png", f"the directory of --out {a_file} is a file"),
                         (tmp_path, "is a directory")):
        assert plot_losses.main(["--out", str(out)]) == 2
        assert message in _one_line(capsys)
    good = tmp_path / "figs" / "fig5.png"
    assert plot_losses.main(["--out", str(good)]) == 0
    assert good.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in good.parent.iterdir()] == ["fig5.png"]


@pytest.mark.parametrize("below", [False, True])
def test_download_refuses_a_data_dir_that_is_or_lies_below_a_file(capsys, a_file, below):
    data_dir = a_file / "data" if below else a_file
    assert download.main(["--data_dir", str(data_dir)]) == 2
    line = _one_line(capsys)
    assert line.startswith("download: error: --data_dir")
    assert ("lies below the file" if below else "is a file") in line
