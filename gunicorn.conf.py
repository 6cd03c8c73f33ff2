"""gunicorn settings for long-lived streams; `gunicorn -c gunicorn.conf.py wsgi:app`."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

# prometheus_client picks in-memory or shared-file counting once, when it is first
# imported, and `chatsvc` imports it: the folder must be in the environment before
# the import below, or every worker counts alone and /metrics stays empty.
_METRICS_PREFIX = "chatsvc-metrics-"
_metrics_dir: str | None = None
_master_pid = os.getpid()


def _remove_metrics_dir() -> None:
    # Only a folder this very start made (an operator's own is theirs to keep),
    # and only in the master: forked workers run atexit handlers too.
    if _metrics_dir is not None and os.getpid() == _master_pid:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def _remove_dead_starts_metrics_dirs() -> None:
    """A start that was SIGKILLed could not clean up; its pid is in the name."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        pid = name.removeprefix(_METRICS_PREFIX).split("-", 1)[0]
        if name.startswith(_METRICS_PREFIX) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            except PermissionError:
                pass  # another user's live process


if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _remove_dead_starts_metrics_dirs()
    _metrics_dir = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    # Also when the master stops before on_exit can run (a bad variable below).
    atexit.register(_remove_metrics_dir)

from chatsvc.config import ConfigError, load  # noqa: E402
from chatsvc.store import Embedded, EmbeddedStoreError  # noqa: E402

# A bad variable stops the server here, in one line, before any worker boots.
try:
    _config = load()
except ConfigError as exc:
    sys.exit(f"chatsvc: {exc}")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# gthread, plus deadlines for slow clients and gunicorn's own errors as JSON: each
# request gets a thread, so a stream that lasts minutes does not hold a whole
# worker, and the worker's heartbeat to the master keeps beating. The default
# sync worker would be killed by `timeout` mid-stream.
worker_class = "chatsvc.worker.Worker"
# One worker per core; streams mostly wait on Ollama, so threads carry the load.
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 2))
# A stream holds a thread for its whole life: room for CHATSVC_MAX_STREAMS streams
# per worker plus some for the page, health checks and metrics alongside them.
threads = _config["CHATSVC_MAX_STREAMS"] + 16
# Connections still sending their request wait without a thread (chatsvc.worker),
# so many slow ones cost only a file descriptor each.
worker_connections = threads + 2048
# Each of them needs a descriptor: take the most the system lets this user have.
_, _files_max = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_files_max, _files_max))
except (ValueError, OSError):
    pass  # an unlimited hard limit cannot be the soft one; keep the default
# With gthread, `timeout` only bounds how long a worker's main loop may be stuck,
# not a request, so the default suits streams of any length.
timeout = 30
# On SIGTERM open streams get this long to finish; then chatsvc ends them with an
# in-band error (see post_worker_init) before the master's SIGKILL.
graceful_timeout = _config["CHATSVC_GRACEFUL_TIMEOUT_S"]
# Ollama's clients reuse connections; a proxy in front keeps its own pool.
keepalive = 75
# Streams are logged by chatsvc itself, one JSON line each, at their end.
accesslog = None
control_socket_disable = True

_simulator: subprocess.Popen[str] | None = None
_stopping = threading.Event()


def _ollama_answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _start_simulator(port: int) -> str:
    """Start the demo simulator on port (0: any); return its URL."""
    global _simulator
    _simulator = subprocess.Popen(
        [sys.executable, "-m", "chatsvc.simulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert _simulator.stdout is not None
    return _simulator.stdout.readline().split()[-1]


def _keep_simulator_running(url: str) -> None:
    """Start the simulator again whenever it exits, on the same port."""
    port = int(url.rsplit(":", 1)[1])
    while True:
        assert _simulator is not None
        # gunicorn's master reaps every child, so the exit code is not ours to read.
        _simulator.wait()
        if _stopping.is_set():
            return
        print(
            f"chatsvc: the built-in Ollama simulator exited; starting it again "
            f"at {url}",
            flush=True,
        )
        if _stopping.wait(1.0):  # a simulator that dies at once must not spin
            return
        _start_simulator(port)


def _check_ollama() -> None:
    """Serve the demo simulator without Ollama; warn when OLLAMA_HOST is silent."""
    host = os.environ.get("OLLAMA_HOST")
    if host:
        from ollama._client import _parse_host  # the client's own reading of it

        address = _parse_host(host).split("://", 1)[1].split("/", 1)[0]
        name, _, port = address.rpartition(":")
        if not _ollama_answers(name.strip("[]"), int(port)):
            print(
                f"chatsvc: warning: nothing answers at OLLAMA_HOST={host} yet; "
                "requests that need Ollama get 503 until it does",
                flush=True,
            )
        return
    if _ollama_answers("127.0.0.1", 11434):
        return
    url = _start_simulator(0)
    os.environ["OLLAMA_HOST"] = url
    print(
        f"chatsvc: no Ollama found at 127.0.0.1:11434 and OLLAMA_HOST is unset; "
        f"serving the built-in Ollama simulator at {url} (demo replies, no model)",
        flush=True,
    )
    threading.Thread(target=_keep_simulator_running, args=(url,), daemon=True).start()


# Here rather than in a hook: the notice must be the first line of output, and the
# workers must inherit OLLAMA_HOST.
_check_ollama()

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


def on_starting(server: Any) -> None:
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    # A previous run's files would add its counts to ours.
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


def post_worker_init(worker: Any) -> None:
    state = worker.wsgi.extensions["chatsvc"]
    if _simulator is not None:
        state.upstream.unreachable_hint = (
            "the built-in Ollama simulator is not answering; chatsvc restarts it "
            "by itself, so try again in a moment"
        )
    graceful = worker.cfg.graceful_timeout
    original = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        # End streams in-band just before the master's SIGKILL would cut them:
        # half a second is ample to write one error line.
        state.upstream.end_all_after(max(0.0, graceful - 0.5))
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

    # gunicorn numbers workers from 1 as it starts them: the first one up means
    # the page is served.
    if worker.age == 1:
        host, port = worker.sockets[0].getsockname()[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"chatsvc: serving http://{host}:{port}/", flush=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    _stopping.set()
    if _simulator is not None:
        _simulator.terminate()
    if _store is not None:
        _store.stop()
    _remove_metrics_dir()
