"""Meta-learning across Ray workers, on a real local Ray instance (2 CPUs, no dashboard, a small
object store) and real RotatedMNIST: parallel outer steps give the sequential run's w, a task
whose worker process dies is run again, the CMA-ES candidates of a generation run as tasks with
the same search, and an unreachable --ray_address is one line and exit 2 before anything loads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

from domainbed_itl.meta import data as meta_data  # noqa: E402
from domainbed_itl.meta.families import initial_w, make_family  # noqa: E402
from domainbed_itl.meta.outer import MetaConfig, make_domain_set, run_split  # noqa: E402
from domainbed_itl.meta.ray_backend import RayBackend, RaySplitRunner  # noqa: E402
from domainbed_itl.meta.trainer import MetaTrainer  # noqa: E402
from domainbed_itl.scripts import (
    meta_cmaes,  # noqa: E402
    meta_train,  # noqa: E402
)

CFG = MetaConfig(hidden=(16,), inner_steps=20, hessian_batch=48, val_batch=64,
                 eval_examples=100, neumann_terms=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backend():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        ray_backend = RayBackend()
        yield ray_backend
        ray_backend.close()


@pytest.fixture(scope="module")
def small_rmnist(rmnist):
    """200 real images of each of RotatedMNIST's six domains."""
    domains, num_classes = rmnist
    return make_domain_set([(x[:200], y[:200]) for x, y in domains], num_classes, 100, 0)


def _trainer(data, runner=None) -> MetaTrainer:
    family = make_family("taylor", 4)
    w0 = initial_w(family, "ce_like", 10, torch.Generator().manual_seed(0))
    return MetaTrainer(data, family, CFG, w0, runner=runner)


def test_parallel_outer_steps_give_the_sequential_w(backend, small_rmnist):
    sequential, parallel = _trainer(small_rmnist), _trainer(small_rmnist, RaySplitRunner(backend))
    for _ in range(2):
        a, b = sequential.outer_step(), parallel.outer_step()
        assert not a["skipped"] and not b["skipped"]
        assert a["held_out_accs"] == b["held_out_accs"]
        assert a["hypergrad_norm"] == pytest.approx(b["hypergrad_norm"], rel=1e-5)
    torch.testing.assert_close(parallel.w.detach(), sequential.w.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(parallel.w.detach(), torch.tensor(parallel.records[0]["w"]))


def test_a_task_whose_worker_dies_is_run_again(backend, small_rmnist, tmp_path):
    marker = str(tmp_path / "died")

    def dies_once(*args):
        """The first task to get here kills its own worker process; the others, and the
        retried one, run the split."""
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return run_split(*args)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    sequential = _trainer(small_rmnist)
    dying = _trainer(small_rmnist, RaySplitRunner(backend, task=dies_once))
    a, b = sequential.outer_step(), dying.outer_step()
    assert int(Path(marker).read_text()) != os.getpid()  # a worker, not this process, died
    assert a["held_out_accs"] == b["held_out_accs"] and len(b["held_out_accs"]) == 6
    torch.testing.assert_close(dying.w.detach(), sequential.w.detach(), rtol=1e-5, atol=1e-6)


def test_cmaes_generations_on_ray_match_the_local_search(backend, tmp_path, mnist_dir, rmnist,
                                                          monkeypatch):
    monkeypatch.setattr(meta_data, "load_domains", lambda *args: rmnist)
    tiny = ["--data_dir", str(mnist_dir), "--hidden", "16", "--inner_steps", "5",
            "--val_batch", "64", "--eval_examples", "50", "--exclude_envs", "0", "1", "2",
            "--popsize", "3", "--budget", "18"]
    logs = {}
    for name, extra in (("local", []), ("ray", ["--backend", "ray"])):
        out = tmp_path / name
        assert meta_cmaes.main([*tiny, "--output_dir", str(out), *extra]) == 0
        logs[name] = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                      for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in logs["ray"]] == [0, 1]
    for a, b in zip(logs["local"], logs["ray"], strict=True):
        assert a["best_w"] == b["best_w"] and a["sigma"] == b["sigma"]
        assert a["best_held_out_acc"] == b["best_held_out_acc"]
        assert a["best_fitness"] == pytest.approx(b["best_fitness"], rel=1e-5)
    # --backend is where the search runs, not what it is: the local search resumes on Ray.
    assert meta_cmaes.main([*tiny[:-1], "27", "--output_dir", str(tmp_path / "local"),
                       "--backend", "ray"]) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["train", "cmaes"])
def test_an_unreachable_ray_address_is_one_line_and_exit_2(tmp_path, capsys, command):
    address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "out"
    argv = ["--data_dir", str(tmp_path / "no_data"), "--output_dir", str(out), "--backend",
            "ray", "--ray_address", address]
    main = meta_train.main if command == "train" else meta_cmaes.main
    assert main([*argv, *(["--budget", "10"] if command == "cmaes" else [])]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot reach a Ray cluster at --ray_address {address}" in line
    assert "ray start --head" in line
    assert not out.exists()


@pytest.mark.slow
def test_a_killed_ray_driver_resumes_from_its_checkpoint(tmp_path, mnist_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "domainbed_itl.scripts.meta_train", "--data_dir", str(mnist_dir),
           "--output_dir", str(out), "--outer_steps", "3", "--hidden", "64",
           "--inner_steps", "150", "--hessian_batch", "128", "--val_batch", "256",
           "--eval_examples", "300", "--threads", "1", "--backend", "ray"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    saved = torch.load(checkpoint, weights_only=True)
    done = saved["step"]
    assert done >= 1 and len(before) in (done - 1, done)  # see test_meta's kill test
    if done == 3:
        pytest.skip("the run finished before it could be killed")
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    after = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after] == [0, 1, 2]
    assert after[:done] == saved["records"] and after[:len(before)] == before
