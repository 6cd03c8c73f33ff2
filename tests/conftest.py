"""Shared fixtures: the Ollama simulator, and the app with a test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
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
