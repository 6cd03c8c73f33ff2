"""The simulator: settings, records, model state and slots, and its HTTP server."""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from . import catalog
from .handler import VERSION, Handler
from .pacer import Pacer
from .wire import Gone, Reject

__all__ = ["FAULTS", "VERSION", "Hangup", "RequestRecord", "Settings", "Simulator"]

# Chat and generate take every fault, natively and on /v1; embeddings take
# error_before and busy; a pull takes the others as a download's failures.
FAULTS = (
    "error_before",  # real 500 before any byte
    "error_after",  # 200, K lines, an {"error"} line, clean end, no done line;
    # on /v1 Ollama's middleware swallows it: a "model":"" chunk, no finish, no [DONE]
    "drop_after",  # 200, K lines, then the connection is closed mid-body
    "cut_before_done",  # 200, every line but the done line, clean end
    "error_first_line",  # pre-0.12.6: 200 whose first line is {"error"}
    "busy",  # Ollama's 503 when its scheduler queue is full (OLLAMA_MAX_QUEUE)
)


@dataclass
class Settings:
    """Behaviour knobs, read once at the start of each request."""

    models: list[str] = field(
        default_factory=lambda: ["llama3.2", "qwen3", "nomic-embed-text"]
    )
    first_token_delay: float = 0.4
    interval: float = 0.04
    chunks: int | None = None
    fault: str | None = None
    fault_after: int = 3
    fault_message: str = (
        "an error was encountered while running the model: unexpected EOF"
    )
    parallel: int | None = None  # OLLAMA_NUM_PARALLEL per model; None: no limit
    load_delay: float = 0.0  # seconds to load a model that is not loaded
    pull_speed: float = 100e6  # bytes per second a pull downloads
    pull_tick: float = 0.06  # seconds between progress lines, as Ollama's ticker


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass(frozen=True)
class Hangup:
    path: str
    at: float
    chunks_sent: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        self.pacer = Pacer()
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skips HTTPServer's reverse DNS lookup
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients leaving is routine
            super().handle_error(request, client_address)

    def drop_all(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _invalid(s: Settings) -> str | None:
    """Why these settings cannot be used, or None."""

    def number(v: Any, kind: type = float) -> bool:
        allowed = (int, float) if kind is float else (int,)
        return isinstance(v, allowed) and not isinstance(v, bool) and v >= 0

    if not isinstance(s.models, list) or not all(isinstance(m, str) for m in s.models):
        return "models must be a list of strings"
    if not number(s.first_token_delay) or not number(s.interval):
        return "first_token_delay and interval must be numbers >= 0"
    if not (s.chunks is None or number(s.chunks, int)) or not number(
        s.fault_after, int
    ):
        return "chunks (or null) and fault_after must be integers >= 0"
    if s.fault is not None and s.fault not in FAULTS:
        return f"fault must be null or one of: {', '.join(FAULTS)}"
    if not isinstance(s.fault_message, str):
        return "fault_message must be a string"
    if s.parallel is not None and not (number(s.parallel, int) and s.parallel > 0):
        return "parallel must be null or an integer >= 1"
    if not number(s.pull_speed) or not s.pull_speed or not number(s.pull_tick):
        return "pull_speed must be a number > 0 and pull_tick a number >= 0"
    return None


class Simulator:
    """An in-process Ollama stand-in; ``with Simulator(...) as sim:`` serves it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> None:
        self.host = host
        self.port = port
        self._overrides = settings
        self.settings = Settings(**settings)
        if problem := _invalid(self.settings):
            raise ValueError(problem)
        self.url = ""
        self.requests: list[RequestRecord] = []
        self.hangups: list[Hangup] = []
        self._cond = threading.Condition()
        self._streams_open = 0
        self._returned = 0  # hang-ups already handed out by wait_hangup
        self._installed: dict[str, catalog.Installed] = {}  # lower canonical ->
        self._loaded: dict[str, catalog.Loaded] = {}  # lower canonical ->
        self._blobs: dict[str, bytes] = {}  # "sha256-<hex>" -> first bytes
        self._queues: dict[str, deque[object]] = {}  # waiting for a slot, FIFO
        self._busy: dict[str, int] = {}  # slots taken per model
        self._loader_free = 0.0  # monotonic: when the scheduler's last load ends
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        server = _Server((self.host, self.port), self)
        self._server = server
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="chatsvc-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_all()  # in-flight streams end as if the server died
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Restore the constructor's settings and forget every record and model."""
        with self._cond:
            self.settings = Settings(**copy.deepcopy(self._overrides))
            self.requests.clear()
            self.hangups.clear()
            self._returned = 0
            self._installed.clear()
            self._loaded.clear()
            self._blobs.clear()
            self._loader_free = 0.0
            self._max_in_flight = self._in_flight

    @property
    def streams_open(self) -> int:
        return self._streams_open

    def wait_hangup(self, timeout: float) -> Hangup | None:
        """Return the next hang-up not yet returned here, waiting up to timeout."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self.hangups) > self._returned, timeout
            ):
                return None
            self._returned += 1
            return self.hangups[self._returned - 1]

    def stats(self) -> dict[str, Any]:
        cpu = os.times()
        with self._cond:
            return {
                "hangups": [dataclasses.asdict(h) for h in self.hangups],
                "streams_open": self._streams_open,
                "requests": len(self.requests),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "waiting": sum(len(q) for q in self._queues.values()),
                "cpu_seconds": cpu.user + cpu.system,
            }

    # -- used by the handler

    def _snapshot(self) -> Settings:
        current = self.settings
        return dataclasses.replace(current, models=list(current.models))

    def _configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise Reject(400, f"unknown setting {sorted(unknown)[0]!r}")
        updated = dataclasses.replace(self.settings, **changes)
        if problem := _invalid(updated):
            raise Reject(400, problem)
        with self._cond:
            self.settings = updated
            self._cond.notify_all()  # a higher `parallel` frees waiters
        return dataclasses.asdict(updated)

    @contextmanager
    def _stream_open(self) -> Iterator[None]:
        with self._cond:
            self._streams_open += 1
        try:
            yield
        finally:
            with self._cond:
                self._streams_open -= 1

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: Any, at: float
    ) -> None:
        with self._cond:
            self.requests.append(RequestRecord(method, path, headers, body, at))

    def _hung_up(self, path: str, chunks_sent: int) -> None:
        at = time.monotonic()
        if self._server is None:  # stop() cut the stream, the client did not
            return
        with self._cond:
            self.hangups.append(Hangup(path, at, chunks_sent))
            self._cond.notify_all()

    @contextmanager
    def _slot(self, model: str, gone: Callable[[], bool]) -> Iterator[None]:
        """One of the model's `parallel` slots; waits FIFO and silently for it."""
        key = catalog.canonical(model).lower()
        ticket = object()
        with self._cond:
            queue = self._queues.setdefault(key, deque())
            queue.append(ticket)
            try:
                while not (
                    queue[0] is ticket
                    and self._busy.get(key, 0) < (self.settings.parallel or sys.maxsize)
                ):
                    # Silent while it waits, but it notices the client leaving.
                    self._cond.wait(0.02)
                    if gone():
                        raise Gone
            finally:
                queue.remove(ticket)
                self._cond.notify_all()
            self._busy[key] = self._busy.get(key, 0) + 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._cond:
                self._busy[key] -= 1
                self._in_flight -= 1
                self._cond.notify_all()

    @contextmanager
    def _using(self, model: str, keep: float | None, delay: float) -> Iterator[float]:
        """The model loaded (if need be) and in use for one request.

        Yields when (monotonic) the load is done; the keep-alive timer starts when
        the model's last request ends.
        """
        key = catalog.canonical(model).lower()
        with self._cond:
            loaded = self._loaded.get(key)
            if (
                loaded
                and not loaded.busy
                and loaded.expires(time.time()) <= time.time()
            ):
                loaded = None  # expired: unloaded, so loaded again
            if loaded is None:
                default = 300.0 if keep is None else keep
                # The scheduler loads one model at a time: a load waits for the last.
                ready_at = max(time.monotonic(), self._loader_free) + delay
                self._loader_free = ready_at
                loaded = self._loaded[key] = catalog.Loaded(default, ready_at=ready_at)
            elif keep is not None:  # any request that carries keep_alive replaces it
                loaded.keep_alive = keep
            loaded.busy += 1
        try:
            yield loaded.ready_at
        finally:
            with self._cond:
                loaded.busy -= 1
                if not loaded.busy:
                    loaded.idle_since = time.time()
                    if loaded.keep_alive == 0 and self._loaded.get(key) is loaded:
                        del self._loaded[key]

    def _unload(self, model: str) -> None:
        with self._cond:
            self._loaded.pop(catalog.canonical(model).lower(), None)

    def _running(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            live = [
                (loaded.expires(now), name)
                for name, loaded in self._loaded.items()
                if loaded.busy or loaded.expires(now) > now
            ]
            models = list(self.settings.models)
        running = []
        for expiry, key in sorted(live, reverse=True):
            name = catalog.find(models, key) or key
            running.append(catalog.ps_entry(name, self._spec(name), expiry))
        return running

    def _spec_of(self, name: str) -> str:
        made = self._installed.get(catalog.canonical(name).lower())
        return made.spec_of if made else name

    def _spec(self, name: str) -> catalog.Spec:
        return catalog.spec(name, self._installed)

    def _tags(self) -> list[dict[str, Any]]:
        models = list(self.settings.models)
        listed = [
            (catalog.modified(m, i, self._installed), m) for i, m in enumerate(models)
        ]
        listed.sort(key=lambda pair: pair[0], reverse=True)  # newest first
        return [catalog.entry(m, self._spec(m), t) for t, m in listed]

    def _show(self, name: str) -> dict[str, Any]:
        models = list(self.settings.models)
        found = catalog.find(models, name)
        if found is None:
            raise Reject(404, f"model '{catalog.canonical(name)}' not found")
        made = self._installed.get(catalog.canonical(found).lower())
        when = catalog.modified(found, models.index(found), self._installed)
        return catalog.show(found, self._spec(found), when, made.system if made else "")

    def _install(self, name: str, spec_of: str = "", system: str = "") -> None:
        key = catalog.canonical(name).lower()
        with self._cond:
            models = [
                m for m in self.settings.models if catalog.canonical(m).lower() != key
            ]
            self.settings.models = [name, *models]
            self._installed[key] = catalog.Installed(spec_of or name, system=system)

    def _remove(self, name: str) -> bool:
        key = catalog.canonical(name).lower()
        with self._cond:
            models = self.settings.models
            kept = [m for m in models if catalog.canonical(m).lower() != key]
            self.settings.models = kept
            self._installed.pop(key, None)  # a loaded runner stays until it expires
            return len(kept) < len(models)

    def _blob(self, digest: str) -> bytes | None:
        return self._blobs.get(digest.replace(":", "-", 1))

    def _add_blob(self, digest: str, head: bytes) -> None:
        with self._cond:
            self._blobs[digest.replace(":", "-", 1)] = head
