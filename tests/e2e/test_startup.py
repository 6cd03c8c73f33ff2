"""Starting the server: bad configuration, and no Ollama on the machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
import requests

from tests.e2e.conftest import ROOT, free_port, gunicorn_command

pytestmark = pytest.mark.e2e


def gunicorn(port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        gunicorn_command(port), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHATSVC_HEARTBEAT_S", "-1"),
        ("CHATSVC_MAX_STREAMS", "lots"),
        ("CHATSVC_MAX_BODY_BYTES", "0"),
        ("CHATSVC_REDIS_URL", "http://127.0.0.1:6379"),
        ("CHATSVC_LEASE_S", "0"),
    ],
)
def test_a_bad_variable_stops_the_server_naming_it(name: str, value: str) -> None:
    with gunicorn(free_port(), {**os.environ, name: value}) as proc:
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out.splitlines()[0].startswith(f"chatsvc: {name}={value!r} is not valid")


def ollama_is_here() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 11434), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_without_ollama_it_serves_the_simulator_and_says_so() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OLLAMA_HOST", "CHATSVC_REDIS_URL")
    }
    port = free_port()
    with gunicorn(port, env) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        try:
            if ollama_is_here():  # a real Ollama on this machine is used instead
                assert "simulator" not in first
                return
            assert first.startswith("chatsvc: no Ollama found at 127.0.0.1:11434")
            assert "built-in Ollama simulator at http://127.0.0.1:" in first
            # The embedded store is announced next (CHATSVC_REDIS_URL is unset).
            assert proc.stdout.readline().startswith(
                "chatsvc: CHATSVC_REDIS_URL is unset; serving the embedded store "
            )
            for line in proc.stdout:  # wait until a worker is up
                if "Booting worker" in line:
                    break
            reply = requests.post(
                f"http://127.0.0.1:{port}/api/chat?format=text",
                json={
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": "hi"}],
                },
                timeout=30,
            )
            assert reply.status_code == 200 and len(reply.text) > 20
            simulator = first.rsplit("at ", 1)[1].split()[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    # The simulator went with the server.
    with pytest.raises(requests.ConnectionError):
        requests.get(simulator, timeout=5)
