"""Starting the server as README does: bad configuration, no Ollama, metrics."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from chatsvc.simulator import Simulator
from tests.e2e.conftest import (
    ROOT,
    RUN_COMMAND,
    bare_env,
    free_port,
    metrics_dirs,
)

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def run(port: int, **env: str) -> subprocess.Popen[str]:
    """bin/run with nothing in its environment but PATH, HOME, PORT and env."""
    return subprocess.Popen(
        RUN_COMMAND, cwd=ROOT, env=bare_env(PORT=str(port), **env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


@contextmanager
def serving(**env: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """bin/run until its first worker serves; yields it, its URL, its lines so far."""
    port = free_port()
    with run(port, **env) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("chatsvc: serving http://"):
                    break
            assert lines[-1] == f"chatsvc: serving http://127.0.0.1:{port}/\n", lines
            yield proc, f"http://127.0.0.1:{port}", lines
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert metrics_dirs(proc.pid) == []  # the folder it made went with it


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def workers_of(pid: int) -> list[int]:
    """The master's gunicorn workers (not the simulator or the embedded store)."""
    return [child for child in children(pid) if "gunicorn" in cmdline(child)]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHATSVC_HEARTBEAT_S", "-1"),
        ("CHATSVC_MAX_STREAMS", "lots"),
        ("CHATSVC_MAX_BODY_BYTES", "0"),
        ("CHATSVC_REDIS_URL", "http://127.0.0.1:6379"),
        ("CHATSVC_LEASE_S", "0"),
        ("CHATSVC_GRACEFUL_TIMEOUT_S", "abc"),
        ("CHATSVC_CLIENT_TIMEOUT_S", "-1"),
    ],
)
def test_a_bad_variable_stops_the_server_naming_it(name: str, value: str) -> None:
    with run(free_port(), **{name: value}) as proc:
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out.splitlines() == [f"chatsvc: {name}={value!r} is not valid: " + (
        "must be a whole number of at least 1" if name in (
            "CHATSVC_MAX_STREAMS", "CHATSVC_MAX_BODY_BYTES",
            "CHATSVC_GRACEFUL_TIMEOUT_S",
        ) else "Redis URL must specify one of the following schemes "
        "(redis://, rediss://, unix://)" if name == "CHATSVC_REDIS_URL"
        else "must be a number of seconds greater than 0"
    )]  # fmt: skip
    assert metrics_dirs(proc.pid) == []


def ollama_is_here() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 11434), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_without_ollama_it_serves_the_simulator_and_restarts_it() -> None:
    with serving() as (proc, url, lines):
        if ollama_is_here():  # a real Ollama on this machine is used instead
            assert "simulator" not in lines[0]
            return
        assert lines[0].startswith("chatsvc: no Ollama found at 127.0.0.1:11434")
        assert "built-in Ollama simulator at http://127.0.0.1:" in lines[0]
        # The embedded store is announced next (CHATSVC_REDIS_URL is unset).
        assert lines[1].startswith(
            "chatsvc: CHATSVC_REDIS_URL is unset; serving the embedded store "
        )
        simulator_url = lines[0].rsplit("at ", 1)[1].split()[0]
        reply = requests.post(f"{url}/api/chat?format=text", json=CHAT, timeout=30)
        assert reply.status_code == 200 and len(reply.text) > 20

        # The simulator dies: the next request is told what is true, chatsvc says
        # so in its log, and starts it again where the workers expect it.
        (simulator,) = [p for p in children(proc.pid) if "simulator" in cmdline(p)]
        os.kill(simulator, signal.SIGKILL)
        while Path(f"/proc/{simulator}/cmdline").exists():
            time.sleep(0.01)  # gone once gunicorn's master has reaped it
        down = requests.get(f"{url}/api/tags", timeout=10)
        assert down.status_code == 503
        assert down.json() == {
            "error": f"cannot reach Ollama at {simulator_url}; the built-in Ollama "
            "simulator is not answering; chatsvc restarts it by itself, so try "
            "again in a moment"
        }
        assert proc.stdout is not None
        for line in proc.stdout:
            if "simulator exited" in line:
                break
        assert line == (
            "chatsvc: the built-in Ollama simulator exited; starting it again at "
            f"{simulator_url}\n"
        )
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/api/tags", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the simulator did not come back"
            time.sleep(0.1)
    # The simulator went with the server.
    with pytest.raises(requests.ConnectionError):
        requests.get(simulator_url, timeout=5)


def test_a_silent_ollama_host_gets_one_warning_and_the_server_starts() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with serving(OLLAMA_HOST=nobody) as (_, url, lines):
        warnings = [line for line in lines if "warning" in line]
        assert (
            lines[0]
            == warnings[0]
            == (
                f"chatsvc: warning: nothing answers at OLLAMA_HOST={nobody} yet; "
                "requests that need Ollama get 503 until it does\n"
            )
        )
        assert len(warnings) == 1
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        down = requests.get(f"{url}/api/tags", timeout=10)
        assert down.status_code == 503
        assert "OLLAMA_HOST" in down.json()["error"]


def completed_per_worker(folder: str) -> dict[int, float]:
    """chatsvc_streams_total{outcome="completed"} as each worker's file holds it."""
    counts: dict[int, float] = {}
    for path in glob.glob(f"{folder}/counter_*.db"):
        pid = int(Path(path).stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
            _, sample, labels, _ = json.loads(key)
            if sample == "chatsvc_streams_total" and labels == {"outcome": "completed"}:
                counts[pid] = counts.get(pid, 0) + value
    return counts


def scrape(url: str, series: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    lines = text.splitlines()
    values = [float(line.split()[-1]) for line in lines if line.startswith(series)]
    assert len(values) == 1, text
    return values[0]


def test_metrics_count_every_stream_across_two_workers_under_bin_run(
    sim: Simulator,
) -> None:
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.02
    sim.settings.chunks = 10
    with serving(OLLAMA_HOST=sim.url, WEB_CONCURRENCY="2") as (proc, url, _):
        deadline = time.monotonic() + 10
        while len(workers := workers_of(proc.pid)) < 2:  # the second may still boot
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (folder,) = metrics_dirs(proc.pid)

        def chat(_: int) -> None:
            with requests.post(f"{url}/api/chat", json=CHAT, stream=True) as response:
                assert response.status_code == 200
                assert b'"done":true' in response.content.splitlines()[-1]

        # Streams at once, a round at a time, until both workers have served
        # some: which worker accepts a connection is the kernel's choice.
        streams = 0
        with ThreadPoolExecutor(8) as pool:
            # Each worker writes its zero counts at boot: wait for real ones.
            while {p for p, n in completed_per_worker(folder).items() if n} != set(
                workers
            ):
                assert streams < 200, completed_per_worker(folder)
                list(pool.map(chat, range(8)))
                streams += 8
        assert sum(completed_per_worker(folder).values()) == streams
        # Whichever worker answers /metrics counts both workers' streams.
        for _ in range(6):
            assert scrape(url, 'chatsvc_streams_total{outcome="completed"}') == streams
            assert scrape(url, 'chatsvc_chunks_total{route="/api/chat"}') == (
                streams * 11  # ten chunks and the done chunk
            )
            assert scrape(url, "chatsvc_streams_open ") == 0


def test_metrics_folders_do_not_pile_up(sim: Simulator) -> None:
    # A worker SIGKILLed and replaced: the folder stays in use, then goes with
    # the server.
    with serving(OLLAMA_HOST=sim.url, WEB_CONCURRENCY="1") as (proc, url, _):
        (folder,) = metrics_dirs(proc.pid)
        (worker,) = workers_of(proc.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while workers_of(proc.pid) in ([], [worker]):
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.05)
        assert requests.post(f"{url}/api/chat", json=CHAT, timeout=10).ok
        assert "chatsvc_streams_total" in requests.get(f"{url}/metrics").text
        assert metrics_dirs(proc.pid) == [folder]
    # serving() checked that it is gone. A server SIGKILLed cannot clean up: the
    # next start does.
    with run(free_port(), OLLAMA_HOST=sim.url, WEB_CONCURRENCY="1") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("chatsvc: serving"):
                break
        (killed,) = metrics_dirs(proc.pid)
        worker = children(proc.pid)
        proc.kill()
        proc.communicate()
    for pid in worker:  # a worker leaves once it sees its master gone
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
    assert Path(killed).exists()
    with serving(OLLAMA_HOST=sim.url, WEB_CONCURRENCY="1"):
        assert not Path(killed).exists()
