"""Shared fixtures: the Ollama simulator, and the app with a test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from chatsvc import create_app
from chatsvc.simulator import Simulator

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


@pytest.fixture
def make_app(sim: Simulator) -> Iterator[Any]:
    """make_app(**config) -> a Flask app talking to the simulator."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        config = {"OLLAMA_HOST": sim.url, "CHATSVC_HEARTBEAT_S": 0.5, **overrides}
        app = create_app(config)
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["chatsvc"].upstream.close()


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
