"""Shared fixtures: the Ollama simulator, the embedded store, the app with a test
client, and a TLS front with a private CA."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from flask import Flask
from flask.testing import FlaskClient

from chatsvc import create_app
from chatsvc.simulator import Simulator
from chatsvc.store import Embedded

# Fast but still paced, so streaming can be told apart from buffering.
TEST_PACE: dict[str, Any] = {"first_token_delay": 0.0, "interval": 0.005}


@pytest.fixture(scope="session")
def _simulator() -> Iterator[Simulator]:
    with Simulator(**TEST_PACE) as sim:
        yield sim


@pytest.fixture
def sim(_simulator: Simulator) -> Iterator[Simulator]:
    """The simulator, with default settings and empty records for each test."""
    _simulator.reset()
    yield _simulator
    _simulator.reset()


@pytest.fixture(scope="session")
def _embedded_store() -> Iterator[Embedded]:
    server = Embedded()
    yield server
    server.stop()


@pytest.fixture
def store_url(_embedded_store: Embedded) -> str:
    """The embedded store's URL, emptied for each test."""
    with redis.Redis.from_url(_embedded_store.url) as client:
        client.flushall()
    return _embedded_store.url


@pytest.fixture
def make_app(sim: Simulator, store_url: str) -> Iterator[Any]:
    """make_app(**config) -> a Flask app talking to the simulator and the store."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        config = {
            "OLLAMA_HOST": sim.url,
            "CHATSVC_HEARTBEAT_S": 0.5,
            "CHATSVC_REDIS_URL": store_url,
            **overrides,
        }
        app = create_app(config)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["chatsvc"].upstream.close()
        app.extensions["chatsvc"].store.close()


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def tls_front(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    """tls_front(connect) -> a TLS server on 127.0.0.1 with a certificate from a
    private CA that pipes each connection to connect()'s socket: its port, and the
    CA's PEM file."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sockets: list[socket.socket] = []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        src.close()
        dst.close()

    def serve(listener: socket.socket, connect: Callable[[], socket.socket]) -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:  # the listener is closed: the test is over
                return
            try:
                tls = server_ctx.wrap_socket(raw, server_side=True)
            except OSError:  # a client that does not trust the certificate
                raw.close()
                continue
            inner = connect()
            sockets.extend((tls, inner))
            for ends in ((tls, inner), (inner, tls)):
                threading.Thread(target=pipe, args=ends, daemon=True).start()

    def start(connect: Callable[[], socket.socket]) -> tuple[int, str]:
        listener = socket.create_server(("127.0.0.1", 0))
        sockets.append(listener)
        threading.Thread(target=serve, args=(listener, connect), daemon=True).start()
        return int(listener.getsockname()[1]), str(ca_file)

    yield start
    for sock in sockets:
        sock.close()
