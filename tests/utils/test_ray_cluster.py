"""An unreachable or non-Ray --address is one line within a few seconds (utils.ray_cluster)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from utils.errors import InputError
from utils.ray_cluster import CONNECT_TIMEOUT_S, address_endpoint, check_reachable


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "address, endpoint",
    [
        ("auto", None),
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("ray://head", ("head", 10001)),
        ("ray://head:10002", ("head", 10002)),
        ("[::1]:6379", ("::1", 6379)),
        ("head", None),
        ("head:0", None),
        ("head:port", None),
    ],
)
def test_address_endpoint(address, endpoint):
    assert address_endpoint(address) == endpoint


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_closed_local_port_is_one_line_in_bounded_time(scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        check_reachable(address)
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 2
    assert str(err.value).startswith(f"--address {address}: no Ray cluster answers at 127.0.0.1:")


def test_a_silent_server_is_refused_after_the_timeout():
    """Something accepts the connection but never speaks (not a Ray GCS): refused within the timeout."""
    pytest.importorskip("grpc")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(InputError, match=f"127.0.0.1:{port} within 1 s"):
            check_reachable(f"127.0.0.1:{port}", timeout=1.0)
        assert time.monotonic() - start < 5
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
