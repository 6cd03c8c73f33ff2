"""Fixtures for the simulator's own tests: one unpaced simulator per module."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import pytest

from chatsvc.simulator import Simulator


@pytest.fixture(scope="module")
def _module_sim() -> Iterator[Simulator]:
    with Simulator(
        first_token_delay=0, interval=0, pull_tick=0.001, pull_speed=1e11
    ) as sim:
        yield sim


@pytest.fixture
def sim(_module_sim: Simulator) -> Iterator[Simulator]:
    """The simulator, with the module's settings and empty records for each test."""
    _module_sim.reset()
    yield _module_sim
    _module_sim.reset()


@pytest.fixture
def client(sim: Simulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=sim.url) as c:
        yield c
