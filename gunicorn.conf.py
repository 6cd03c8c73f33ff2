"""gunicorn settings for long-lived streams; `gunicorn -c gunicorn.conf.py wsgi:app`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any

from chatsvc.config import ConfigError, load
from chatsvc.store import Embedded, EmbeddedStoreError

# A bad variable stops the server here, in one line, before any worker boots.
try:
    _config = load()
except ConfigError as exc:
    sys.exit(f"chatsvc: {exc}")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# gthread: each request gets a thread, so a stream that lasts minutes does not
# hold a whole worker, and the worker's heartbeat to the master keeps beating.
# The default sync worker would be killed by `timeout` mid-stream.
worker_class = "gthread"
# One worker per core; streams mostly wait on Ollama, so threads carry the load.
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 2))
# A stream holds a thread for its whole life: room for CHATSVC_MAX_STREAMS streams
# per worker plus some for the page, health checks and metrics alongside them.
threads = _config["CHATSVC_MAX_STREAMS"] + 16
worker_connections = threads * 2
# With gthread, `timeout` only bounds how long a worker's main loop may be stuck,
# not a request, so the default suits streams of any length.
timeout = 30
# On SIGTERM open streams get this long to finish; then chatsvc ends them with an
# in-band error (see post_worker_init) before the master's SIGKILL.
graceful_timeout = int(os.environ.get("CHATSVC_GRACEFUL_TIMEOUT_S", "30"))
# Ollama's clients reuse connections; a proxy in front keeps its own pool.
keepalive = 75
# Streams are logged by chatsvc itself, one JSON line each, at their end.
accesslog = None
control_socket_disable = True

_simulator: subprocess.Popen[str] | None = None


def _ollama_answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _use_simulator_if_no_ollama() -> None:
    """No OLLAMA_HOST and nothing on Ollama's port: serve the demo simulator."""
    global _simulator
    if os.environ.get("OLLAMA_HOST") or _ollama_answers("127.0.0.1", 11434):
        return
    _simulator = subprocess.Popen(
        [sys.executable, "-m", "chatsvc.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert _simulator.stdout is not None
    url = _simulator.stdout.readline().split()[-1]
    os.environ["OLLAMA_HOST"] = url
    print(
        f"chatsvc: no Ollama found at 127.0.0.1:11434 and OLLAMA_HOST is unset; "
        f"serving the built-in Ollama simulator at {url} (demo replies, no model)",
        flush=True,
    )


# Here rather than in a hook: the notice must be the first line of output, and the
# workers must inherit OLLAMA_HOST and the metrics folder.
_use_simulator_if_no_ollama()
# Without CHATSVC_REDIS_URL the workers share an embedded store, started here in
# the master so that every worker inherits its URL.
try:
    _store = None if _config["CHATSVC_REDIS_URL"] else Embedded()
except EmbeddedStoreError as exc:
    if _simulator is not None:
        _simulator.terminate()
    sys.exit(f"chatsvc: {exc}")
if _store is not None:
    os.environ["CHATSVC_REDIS_URL"] = _store.url
    print(
        f"chatsvc: CHATSVC_REDIS_URL is unset; serving the embedded store "
        f"(valkey-server {_store.version}) at {_store.url}",
        flush=True,
    )
# prometheus_client's multiprocess mode: every worker writes to one folder.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="chatsvc-metrics-")
)


def on_starting(server: Any) -> None:
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # A previous run's files would add its counts to ours.
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def post_worker_init(worker: Any) -> None:
    state = worker.wsgi.extensions["chatsvc"]
    graceful = worker.cfg.graceful_timeout
    original = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        # End streams in-band a little before the master's SIGKILL would cut them.
        state.upstream.end_all_after(max(0.0, graceful - 2.0))
        original(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)

    # gthread stops accepting on SIGTERM but keeps its copy of the listening
    # socket until its last stream ends, so the kernel goes on completing
    # handshakes that nobody will serve. Closing it as soon as accepting stops
    # (the master closes its own) makes new connections be refused at once.
    set_accept_enabled = getattr(worker, "set_accept_enabled", None)
    if set_accept_enabled is not None:

        def set_accept_enabled_then_close(enabled: bool) -> None:
            set_accept_enabled(enabled)
            if not enabled and not worker.alive:
                for listener in worker.sockets:
                    listener.close()

        worker.set_accept_enabled = set_accept_enabled_then_close


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _simulator is not None:
        _simulator.terminate()
    if _store is not None:
        _store.stop()
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if folder.startswith(tempfile.gettempdir()) and "chatsvc-metrics-" in folder:
        shutil.rmtree(folder, ignore_errors=True)
