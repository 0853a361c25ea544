"""One atomic write for the whole project: whole files or none, with the permissions the umask
allows, from the helper itself up to the files each command writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from domainbed.downloads.integrity import CorruptFileError, FileSpec, verify
from domainbed.downloads.mnist_files import RAW_FILES, from_wheel
from domainbed.lib import atomic


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    """Run the block (and the processes it starts) under `value`."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _atomic_open_png(path: Path) -> None:
    with atomic.atomic_open(path, "wb") as handle:
        handle.write(b"\x89PNG")


WRITERS: dict[str, Callable[[Path], None]] = {
    "text": lambda p: atomic.write_text(p, "done"),
    "bytes": lambda p: atomic.write_bytes(p, b"\x00\x01"),
    "chunks": lambda p: atomic.write_bytes(p, iter([b"ab", b"cd"])),
    "json": lambda p: atomic.write_json(p, {"itl_omega": [1.0]}),
    "torch": lambda p: atomic.torch_save({"w": torch.ones(2)}, p),
    "open": _atomic_open_png,
}


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_gives_the_permissions_of_a_plain_open(tmp_path, writer, mask, expected):
    target = tmp_path / "file"
    with umask(mask):
        WRITERS[writer](target)
        plain = tmp_path / "plain"
        plain.write_text("x")
    assert mode_of(target) == mode_of(plain) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "plain"]


def test_contents_round_trip(tmp_path):
    atomic.write_bytes(tmp_path / "chunks", iter([b"ab", b"cd"]))
    atomic.write_json(tmp_path / "obj.json", {"a": [1, 2]})
    atomic.torch_save({"w": torch.arange(3)}, tmp_path / "state.pt")
    assert (tmp_path / "chunks").read_bytes() == b"abcd"
    assert (tmp_path / "obj.json").read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["w"],
                       torch.arange(3))


def test_a_failed_check_or_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "file.bin"
    spec = FileSpec("file.bin", hashlib.md5(b"expected").hexdigest(), 8)
    with pytest.raises(CorruptFileError):
        atomic.write_bytes(target, [b"unexpect"], check=lambda p: verify(p, spec))
    assert list(tmp_path.iterdir()) == []
    atomic.write_bytes(target, [b"expe", b"cted"], check=lambda p: verify(p, spec))
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "wb") as handle:
        handle.write(b"half")
        raise RuntimeError("killed midway")
    assert target.read_bytes() == b"expected"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_remove_leftovers_takes_only_temporaries_of_killed_writes(tmp_path):
    fd, leftover = atomic._create_temporary(tmp_path / "results.jsonl")  # killed before rename
    os.close(fd)
    for name in ("keep.tmp", ".keep.tmp", "results.jsonl"):
        (tmp_path / name).write_text("a user's file")
    assert atomic.remove_leftovers(tmp_path) == [leftover.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.tmp", "keep.tmp",
                                                          "results.jsonl"]


def _run(module: str, *argv: str) -> None:
    completed = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr


def _group_readable(directory: Path) -> dict[str, int]:
    """The modes of every file below `directory` that are not 0o644."""
    return {str(p.relative_to(directory)): oct(mode_of(p)) for p in directory.rglob("*")
            if p.is_file() and mode_of(p) != 0o644}


def test_train_and_meta_train_outputs_are_group_readable_under_umask_022(tmp_path):
    train_out, meta_out = tmp_path / "train", tmp_path / "meta"
    with umask(0o022):
        _run("domainbed.scripts.train", "--dataset", "Debug28", "--steps", "2",
             "--output_dir", str(train_out))
        _run("domainbed_itl.scripts.meta_train", "--dataset", "Debug28", "--data_dir",
             str(tmp_path),
             "--output_dir", str(meta_out), "--outer_steps", "1", "--hidden", "8",
             "--inner_steps", "2", "--hessian_batch", "8", "--val_batch", "8",
             "--eval_examples", "8", "--neumann_terms", "2", "--threads", "1")
    assert {"results.jsonl", "done", "model.pkl"} <= {p.name for p in train_out.iterdir()}
    assert {p.name for p in meta_out.iterdir()} == {"checkpoint.pt", "log.jsonl",
                                                   "learned_loss.json", "learning_curve.png"}
    assert _group_readable(train_out) == {} and _group_readable(meta_out) == {}


def test_mnist_files_are_group_readable_under_umask_022(tmp_path):
    with umask(0o022):
        from_wheel(tmp_path, RAW_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.name for s in RAW_FILES)
    assert _group_readable(tmp_path) == {}
