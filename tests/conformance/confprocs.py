"""Processes for the conformance suite: free ports, waiting, stopping, chatsvc."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            requests.get(url, timeout=5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def normalise_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    if not re.search(r":\d+$", host.split("://", 1)[1]):
        host += ":11434"
    return host


def start_chatsvc(
    ollama_url: str, folder: Path, **env: str
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """chatsvc as README runs it: bin/run, with PORT and OLLAMA_HOST (and env)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "chatsvc.log"
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHATSVC_", "OLLAMA_"))
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / "bin" / "run")],
            env={**clean, "PORT": str(port), "OLLAMA_HOST": ollama_url, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/healthz", proc, log)
    except RuntimeError:
        stop(proc)
        raise
    return url, proc, log


# chatsvc's heartbeat interval in this suite: README documents the variable.
HEARTBEAT_S = 1.0
