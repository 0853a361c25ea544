"""One Ray connection rule for the `ray` launcher and meta-learning's `--backend ray`: both take
host:port, ray://host:port (a Ray Client server) and auto, refuse anything else in the same
words, and probe a concrete address before Ray's long retries."""

from __future__ import annotations

import socket

import pytest
from launcher_checks import SMALL_SWEEP, assert_launch_refused

pytest.importorskip("ray")

from domainbed_itl.meta.ray_backend import RayBackend, RayUnavailableError  # noqa: E402

SWEEP = [*SMALL_SWEEP, "--command_launcher", "ray"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def no_ray_address(monkeypatch):
    for name in ("DOMAINBED_RAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_both_users_probe_host_port_and_ray_client_addresses(tmp_path, capsys, monkeypatch,
                                                              no_ray_address, scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DOMAINBED_RAY_ADDRESS", address)
    assert_launch_refused(tmp_path / "sweep", SWEEP, capsys,
                          f"cannot reach a Ray cluster at {address} (")
    with pytest.raises(RayUnavailableError,
                       match=f"cannot reach a Ray cluster at --ray_address {address} "):
        RayBackend(address)


def test_both_users_refuse_a_malformed_address_in_the_same_words(tmp_path, capsys, monkeypatch,
                                                                  no_ray_address):
    rule = "must look like host:port, ray://host:port or auto, got 'headnode'"
    monkeypatch.setenv("DOMAINBED_RAY_ADDRESS", "headnode")
    assert_launch_refused(tmp_path / "sweep", SWEEP, capsys, f"DOMAINBED_RAY_ADDRESS {rule}")
    with pytest.raises(RayUnavailableError, match=f"--ray_address {rule}"):
        RayBackend("headnode")
