"""Real gunicorn in a subprocess on a free port, in front of the simulator."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from chatsvc.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def metrics_dirs(pid: int) -> list[str]:
    """The folder bin/run made for prometheus_client, named after gunicorn's pid."""
    return glob.glob(f"/tmp/chatsvc-metrics-{pid}-*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gunicorn_command(port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "wsgi:app"]  # fmt: skip


# README's run command, and the only variables a user's shell surely has: every
# other one a test sets is a README variable, passed on purpose.
RUN_COMMAND = [str(ROOT / "bin" / "run")]


def bare_env(**env: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], **env}


# Every gateway of the session, so that a failed test shows what their logs said
# meanwhile: a timing failure in CI is otherwise gone with its temporary folder.
_gateways: list[Gateway] = []
_LOG_SIZES = pytest.StashKey[dict[Path, int]]()
_LOG_LINES = 60


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOG_SIZES] = {gw.log: gw.log.stat().st_size for gw in _gateways}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        sizes = item.stash.get(_LOG_SIZES, {})
        for gw in _gateways:
            with gw.log.open("rb") as log:
                log.seek(sizes.get(gw.log, 0))
                lines = log.read().decode(errors="replace").splitlines()
            if lines:
                title = f"{gw.log} during the test (last {_LOG_LINES} lines)"
                report.sections.append((title, "\n".join(lines[-_LOG_LINES:])))
    return report


WORKERS = 2  # gunicorn workers per gateway, unless a test sets WEB_CONCURRENCY


def start_gunicorn(folder: Path, env: dict[str, str]) -> Gateway:
    """Start chatsvc as README does (bin/run) with env, on a free port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gunicorn.log"
    defaults = {"CHATSVC_HEARTBEAT_S": "1", "WEB_CONCURRENCY": str(WORKERS)}
    full_env = bare_env(**{**defaults, **env, "PORT": str(port)})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            RUN_COMMAND, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    gateway = Gateway(f"http://127.0.0.1:{port}", proc, log)
    _gateways.append(gateway)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            # The master accepts before a worker is up; the answer waits for one.
            if requests.get(f"{gateway.url}/healthz", timeout=5).ok:
                return gateway
        except requests.RequestException:
            time.sleep(0.05)
    gateway.stop(signal.SIGKILL)
    raise RuntimeError(f"gunicorn did not answer /healthz:\n{gateway.log_text()}")


@pytest.fixture(scope="session")
def gateway(
    _simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """chatsvc under gunicorn for the whole session, talking to the simulator."""
    gw = start_gunicorn(
        tmp_path_factory.mktemp("gateway"), {"OLLAMA_HOST": _simulator.url}
    )
    yield gw
    gw.stop()


@pytest.fixture
def start_gateway(
    _simulator: Simulator, tmp_path: Path
) -> Iterator[Callable[..., Gateway]]:
    """start_gateway(**env) -> another gunicorn with extra settings, for one test."""
    started: list[Gateway] = []

    def start(**env: str) -> Gateway:
        gw = start_gunicorn(
            tmp_path / f"gw{len(started)}", {"OLLAMA_HOST": _simulator.url, **env}
        )
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop(signal.SIGKILL)
