"""Several Ollama hosts behind one address: choice, slots, queue, failover, discovery.

Hosts looks to the relay like one Upstream. With one host it is that host, as
before. With several, each request that names a model goes to a host that lists
it, chosen by API.md's rules; each generation holds a lease on
chatsvc:inflight:<host> in the shared store, so no host gets more than its
`parallel` from all workers and instances together. When every candidate is
full the request waits in a FIFO per model, also in the store. The waiting and
the failover happen on the pump thread, before the first chunk is queued: the
relay sees only a stream that is silent for a while (and sends heartbeats).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import redis

from chatsvc import metrics
from chatsvc.config import HostEntry, parse_hosts
from chatsvc.endpoints import Endpoint
from chatsvc.errors import (
    BadRequest,
    ChatsvcError,
    ClientClosed,
    NotFound,
    Unavailable,
)
from chatsvc.store import PREFIX, Full, Lease, Store
from chatsvc.upstream import Answer, Stream, Upstream, to_error

log = logging.getLogger("chatsvc.hosts")

T = TypeVar("T")

QUEUE_ALL = f"{PREFIX}queue:all"
QUEUE_SEQ = f"{PREFIX}queue:seq"
NO_LIMIT = 1 << 30  # a host without ?parallel: counted, never full
# A queued request looks again as soon as a slot frees or the queue moves (FREED,
# from any worker or instance), and every POLL_S in case a message was lost.
FREED = f"{PREFIX}queue:freed"
_WAKE = ("PUBLISH", FREED, "1")
POLL_S = 0.05
# Counts model changes made through chatsvc (pull, create, copy, delete), so that
# every process reads the lists again before it answers 404.
MODELS_CHANGED = f"{PREFIX}models:changed"
PROBE_MAX_S = 60.0
CONVERSATION_TTL_S = 3600
# The routes whose requests take one of a host's `parallel` slots.
GENERATIONS = frozenset(
    {"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"}
    | {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"}
)

# Model management that applies to every host (API.md); pull streams: _in_turn.
EVERY_HOST = frozenset({"/api/copy", "/api/delete"})
# Model management that goes to one host: ?host=, else the first in OLLAMA_HOST.
ONE_HOST = frozenset({"/api/create", "/api/push"})

# KEYS: the model's queue order, the queue's leases, then each host's in-flight set
# in the order of preference; ARGV: ticket, lease in ms, then each host's limit.
# The first request in the queue (or anyone, when the queue is empty) takes a slot
# on the first host with room. Returns that host's 1-based index, else 0.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket, ms = ARGV[1], tonumber(ARGV[2])
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not head then break end
  local expiry = redis.call('ZSCORE', KEYS[2], head)
  if head == ticket or (expiry and tonumber(expiry) > now) then
    if head ~= ticket then return 0 end
    break
  end
  redis.call('ZREM', KEYS[1], head)  -- its worker died: its place goes
end
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[i]) then
    redis.call('ZADD', KEYS[i], now + ms, ticket)
    redis.call('PEXPIRE', KEYS[i], ms)
    redis.call('ZREM', KEYS[1], ticket)
    redis.call('ZREM', KEYS[2], ticket)
    return i - 2
  end
end
return 0
"""


def canonical(model: str) -> str:
    """x and x:latest are one model; Ollama's names are case-insensitive."""
    name = model.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def inflight_key(name: str) -> str:
    return f"{PREFIX}inflight:{name}"


@dataclass
class Host:
    """One host as this process last saw it."""

    entry: HostEntry
    upstream: Upstream
    up: bool = True
    models: frozenset[str] | None = None  # canonical names; None: not read yet
    loaded: frozenset[str] = frozenset()
    busy_until: float = 0.0
    next_read: float = 0.0
    read_at: float = 0.0  # when its models were last read
    probe_s: float = 5.0
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.entry.name

    def lists(self, model: str) -> bool:
        return self.models is None or canonical(model) in self.models


@dataclass(frozen=True)
class View:
    """What the choice of a host looks at (pure, for the tests)."""

    name: str
    parallel: int | None
    in_flight: int
    loaded: bool
    last: bool  # served this conversation last


def choose(views: Iterable[View]) -> list[str]:
    """Hosts in order of preference: free slot, loaded, same conversation, fewest."""

    def rank(view: View) -> tuple[bool, bool, bool, int, int]:
        free = view.parallel is None or view.in_flight < view.parallel
        # On a tie, the most room left: a small host stays free for the models
        # that have nowhere else to go.
        room = NO_LIMIT if view.parallel is None else view.parallel - view.in_flight
        return (not free, not view.loaded, not view.last, view.in_flight, -room)

    return [view.name for view in sorted(views, key=rank)]


def conversation(body: dict[str, Any]) -> str | None:
    """Key of a conversation: its first user message and its system prompt."""
    system, first = body.get("system"), body.get("prompt")
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("role") == "system" and system is None:
                system = message.get("content")
            elif message.get("role") == "user" and first is None:
                first = message.get("content")
    if first is None:
        return None
    text = json.dumps([system, first], default=str)
    return f"{PREFIX}conv:{hashlib.sha256(text.encode()).hexdigest()}"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _when(entry: Any, key: str) -> float:
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, int | float):
        return float(value)
    try:  # Go gives nanoseconds; Python reads microseconds
        return datetime.fromisoformat(_FRACTION.sub(r"\1", str(value))).timestamp()
    except ValueError:
        return 0.0


def merge(answers: Sequence[Any], key: str, name_of: Sequence[str]) -> dict[str, Any]:
    """Several hosts' model lists as one: each model once, newest first.

    key is the list's field ("models" or OpenAI's "data"); name_of the fields that
    name a model, and the last one is the time to sort by.
    """
    *names, stamp = name_of
    newest: dict[str, Any] = {}
    for answer in answers:
        for entry in answer.get(key) or []:
            name = next((entry[n] for n in names if entry.get(n)), None)
            if not isinstance(name, str):
                continue
            known = newest.get(canonical(name))
            if known is None or _when(entry, stamp) > _when(known, stamp):
                newest[canonical(name)] = entry
    merged = dict(answers[0]) if answers else {}
    merged[key] = sorted(newest.values(), key=lambda e: _when(e, stamp), reverse=True)
    return merged


def next_probe(probe_s: float) -> float:
    """The interval after a probe that found the host still down: doubled, to 60 s."""
    return min(PROBE_MAX_S, probe_s * 2)


def lowest_version(versions: Iterable[str]) -> str:
    def number(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", version.split("-")[0]))

    return min(versions, key=number)


def _verdict(error: ChatsvcError) -> str | None:
    """What a failure before the first byte says about the host, if anything."""
    kind = error.upstream_kind or ""
    if kind in ("unreachable", "protocol"):  # refused, or reset before an answer
        return "down"
    if kind == "status_404":
        return "gone"
    if kind.startswith("status_5"):
        return "busy"
    return None  # the request's own fault, or slow: no other host would do better


class Hosts:
    """Every Ollama host of OLLAMA_HOST, and the one Upstream interface over them."""

    def __init__(self, config: dict[str, Any], store: Store) -> None:
        entries = parse_hosts(config["OLLAMA_HOST"])
        self.store = store
        self.max_queue: int = config["CHATSVC_MAX_QUEUE"]
        self.discovery_s: float = config["CHATSVC_DISCOVERY_S"]
        self.probe_s: float = config["CHATSVC_PROBE_S"]
        self.hosts = [
            Host(
                entry,
                Upstream(
                    entry.url,
                    timeout_s=config["CHATSVC_UPSTREAM_TIMEOUT_S"],
                    max_streams=config["CHATSVC_MAX_STREAMS"],
                    name=entry.name,
                    ca_file=config["SSL_CERT_FILE"],
                ),
                probe_s=self.probe_s,
            )
            for entry in entries
        ]
        self.home = self.hosts[0].upstream  # pumps, hang-ups and shutdown
        self.single = len(self.hosts) == 1
        self._take = store.redis.register_script(_TAKE)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._freed = threading.Condition()
        self._wakes = 0  # FREED messages seen: a wake between look and wait counts
        self._version: Any = None  # MODELS_CHANGED when the lists were last read
        if not self.single:
            threading.Thread(
                target=self._listen, name="chatsvc-freed", daemon=True
            ).start()
            for host in self.hosts:
                metrics.UPSTREAM_UP.labels(host.name).set(1)
                threading.Thread(
                    target=self._watch, args=(host,), name="chatsvc-hosts", daemon=True
                ).start()

    # -- the Upstream interface the relay and the views use -----------------------

    @property
    def host(self) -> str:
        return ", ".join(h.entry.url for h in self.hosts)

    @property
    def unreachable_hint(self) -> str:
        return self.home.unreachable_hint

    @unreachable_hint.setter
    def unreachable_hint(self, hint: str) -> None:
        for host in self.hosts:
            host.upstream.unreachable_hint = hint

    def stream(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        host: str | None = None,
        admit: Callable[[], object] | None = None,
    ) -> Stream:
        """A streamed request; host is ?host= on the routes of ONE_HOST; admit as
        in Upstream.stream."""
        hosts: list[Host] = []
        if endpoint.path in ONE_HOST:
            hosts = [self._host(host)]  # 400 or 503 for a bad ?host=, even with one
        elif endpoint.path == "/api/pull":
            hosts = [h for h in self.hosts if h.up]
        if hosts and not self.single:
            # On home's pool: home's finish and shutdown see it.
            pump = partial(self._in_turn, hosts)
            return self.home.stream(endpoint, body, pump, admit)
        if self._direct(endpoint, body):
            return self.home.stream(endpoint, body, admit=admit)
        return self.home.stream(endpoint, body, self._pump, admit)

    def named(self, name: str | None) -> Upstream:
        """The host ?host= names (host:port), else the first in OLLAMA_HOST."""
        return self._host(name).upstream

    def _host(self, name: str | None) -> Host:
        host = self.hosts[0]
        if name is not None:
            found = [h for h in self.hosts if h.name == name]
            if not found:
                raise BadRequest(
                    f"host '{name}' is not one of OLLAMA_HOST's hosts ({self._names()})"
                )
            host = found[0]
        if not host.up:
            raise Unavailable(
                f"Ollama host {host.name} is down; try again shortly",
                retry_after=int(host.probe_s) or 1,
            )
        return host

    def finish(self, stream: Stream) -> None:
        self.home.finish(stream)

    def watch(self, client_sock: Any, stream: Stream) -> Callable[[], None]:
        return self.home.watch(client_sock, stream)

    def end_all_after(self, seconds: float) -> None:
        self.home.end_all_after(seconds)

    def close(self) -> None:
        self._stop.set()
        for host in self.hosts:
            host.upstream.close()

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        content: Iterable[bytes] | None = None,
    ) -> Answer:
        """One plain call: to the host routing picks when it names a model."""
        model = body.get("model") if isinstance(body, dict) else None
        if path in EVERY_HOST and not self.single:
            return self._on_every_host(method, path, body)
        if self.single and self.hosts[0].entry.parallel is None or not model:
            return self._first_up().request(method, path, body, timeout, content)
        assert body is not None
        return self._route(
            path,
            body,
            lambda up, _: up.request(method, path, body, timeout, content),
            lambda: False,
        )

    def _on_every_host(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> Answer:
        """Copy and delete on every host that is up, one after another: Ollama's
        answer when one succeeded, else the last error (a 404 if none had it)."""
        done: Answer | None = None
        error: ChatsvcError | None = None
        for host in self.hosts:
            if not host.up:
                continue
            try:
                done = host.upstream.request(method, path, body)
            except ChatsvcError as failure:
                self._failed(host, failure)
                error = failure
            self._changed(host)
        if done is not None:
            return done
        raise error or Unavailable(f"no Ollama host answers ({self._names()})")

    def _in_turn(
        self,
        hosts: list[Host],
        stream: Stream,
        endpoint: Endpoint,
        body: dict[str, Any],
    ) -> None:
        """Pull (every host up), create or push (one) on hosts in turn, one stream.

        Each line carries its host; a host that is done says "finished", and only
        the last host's "success" ends the stream (ollama-js stops at the first),
        once every process can know the host's new models.
        A failure ends the stream with that error: no success after it.
        """
        stream.host = ",".join(h.name for h in hosts)
        try:
            stream.admit()
        except ChatsvcError as refused:
            stream.put(refused)
            return
        for i, host in enumerate(hosts):
            if stream.cancelled:
                return
            leg = _Leg(stream, host.name)
            try:
                host.upstream.pump(leg, endpoint, body)
            except Exception as exc:
                up = host.upstream
                error = to_error(exc, up.host, up.unreachable_hint)
                if not stream.cancelled:
                    self._failed(host, error)
                    stream.put(error)
                return
            self._changed(host)
            if i < len(hosts) - 1:
                stream.put({"status": "finished", "host": host.name})
            else:
                stream.put_last({**leg.success, "host": host.name})

    # -- merged answers -------------------------------------------------------------

    def each_up(self, method: str, path: str) -> list[Answer]:
        """The answer of every host that is up (with one host: its answer or error)."""
        if self.single:
            return [self.home.request(method, path)]
        answers = []
        for host in self.hosts:
            if not host.up:
                continue
            try:
                answers.append(host.upstream.request(method, path, timeout=10.0))
            except ChatsvcError as error:
                self._failed(host, error)
        if not answers:
            raise Unavailable(f"no Ollama host answers ({self._names()})")
        return answers

    def states(self) -> dict[str, str]:
        now = time.monotonic()
        return {
            h.name: "down" if not h.up else "busy" if h.busy_until > now else "up"
            for h in self.hosts
        }

    # -- routing ------------------------------------------------------------------

    def _direct(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        """Today's single path: one host with no `parallel`, or no model to route."""
        only = self.single and self.hosts[0].entry.parallel is None
        return only or endpoint.admin or not body.get("model")

    def _first_up(self) -> Upstream:
        return next((h.upstream for h in self.hosts if h.up), self.home)

    def _names(self) -> str:
        return ", ".join(h.name for h in self.hosts)

    def _pump(self, stream: Stream, endpoint: Endpoint, body: dict[str, Any]) -> None:
        if stream.cancelled:
            return
        try:
            stream.admit()  # before this stream counts against any host
            self._route(
                endpoint.path,
                body,
                lambda up, failover: self._attempt(up, stream, endpoint, body),
                lambda: stream.cancelled,
                stream,
            )
        except Exception as exc:
            if not stream.cancelled:
                stream.put(to_error(exc, self.home.host, self.home.unreachable_hint))

    def _attempt(
        self, up: Upstream, stream: Stream, endpoint: Endpoint, body: dict[str, Any]
    ) -> None:
        try:
            up.pump(stream, endpoint, body)
        except Exception as exc:
            raise to_error(exc, up.host, up.unreachable_hint) from None

    def _candidates(self, model: str, tried: set[str]) -> list[Host]:
        if self.single:
            return [h for h in self.hosts if h.name not in tried]
        now = time.monotonic()
        return [
            h
            for h in self.hosts
            if h.up and h.busy_until <= now and h.lists(model) and h.name not in tried
        ]

    def _none_for(self, path: str, model: str) -> ChatsvcError:
        if any(h.lists(model) for h in self.hosts):
            return Unavailable(
                f"every Ollama host that has model '{model}' is down or busy "
                f"({self._names()}); try again shortly",
                retry_after=int(self.probe_s) or 1,
            )
        if path == "/api/embed":
            return NotFound(f'model "{model}" not found, try pulling it first')
        return NotFound(f"model '{model}' not found")

    def _order(self, hosts: list[Host], body: dict[str, Any]) -> list[Host]:
        model = canonical(str(body["model"]))
        conv = conversation(body)
        pipe = self.store.redis.pipeline(transaction=False)
        for host in hosts:
            pipe.zcard(inflight_key(host.name))
        if conv is not None:
            pipe.get(conv)
        try:
            replies = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            self.store.check()  # raises StoreUnavailable: 503, as for stream slots
            raise
        last = replies[len(hosts)] if conv is not None else None
        last = last.decode() if isinstance(last, bytes) else None
        views = [
            View(h.name, h.entry.parallel, int(n), model in h.loaded, h.name == last)
            for h, n in zip(hosts, replies, strict=False)
        ]
        by_name = {h.name: h for h in hosts}
        return [by_name[name] for name in choose(views)]

    def _route(
        self,
        path: str,
        body: dict[str, Any],
        attempt: Callable[[Upstream, bool], T],
        cancelled: Callable[[], bool],
        stream: Stream | None = None,
    ) -> T:
        """Run attempt on the best host with a free slot; wait, fail over."""
        model = str(body["model"])
        counted = path in GENERATIONS
        tried: set[str] = set()
        last_error: ChatsvcError | None = None
        queued: Lease | None = None
        ticket = secrets.token_hex(16)
        waited = time.monotonic()
        refreshed = False
        try:
            while True:
                seen = self._wakes
                candidates = self._candidates(model, tried)
                if not candidates:
                    if last_error is not None:
                        raise last_error
                    if not refreshed and not any(h.lists(model) for h in self.hosts):
                        # Pulled or created meanwhile, maybe through another
                        # worker: read the lists again before a 404.
                        refreshed = True
                        self._refresh()
                        continue
                    if not self._waitable(model, tried):
                        raise self._none_for(path, model)
                else:
                    ordered = self._order(candidates, body)
                    host = self._take_slot(model, ticket, ordered, counted)
                    if host is not None:
                        if queued is not None:
                            # Before keep: the queue's lease has the same member.
                            self._dequeue(queued, model)
                            metrics.QUEUE_WAIT.observe(time.monotonic() - waited)
                            queued = None
                        if counted:
                            self.store.keep(Lease((inflight_key(host.name),), ticket))
                        try:
                            return self._serve(host, body, ticket, counted, attempt)
                        except ChatsvcError as error:
                            if cancelled():
                                raise  # our own hang-up, not the host's fault
                            verdict = _verdict(error)
                            self._failed(host, error, verdict)
                            # After the first byte: an in-band error, never
                            # another host's continuation spliced in.
                            if verdict is None or (stream is not None and stream.sent):
                                raise
                            tried.add(host.name)
                            last_error = error
                            continue
                if queued is None:
                    queued = self._enqueue(model, ticket)
                    ticket = queued.member
                    waited = time.monotonic()
                if cancelled():
                    raise ClientClosed("the client left while waiting for a host")
                with self._freed:
                    if self._wakes == seen:
                        self._freed.wait(POLL_S)
        finally:
            if queued is not None:
                self._dequeue(queued, model)

    def _waitable(self, model: str, tried: set[str]) -> bool:
        """Only busy hosts have it: wait for one to be free again."""
        now = time.monotonic()
        return any(
            h.up and h.busy_until > now and h.lists(model) and h.name not in tried
            for h in self.hosts
        )

    def _take_slot(
        self, model: str, ticket: str, ordered: list[Host], counted: bool
    ) -> Host | None:
        if not counted:
            return ordered[0]
        keys = [f"{PREFIX}queue:order:{canonical(model)}", QUEUE_ALL]
        keys += [inflight_key(h.name) for h in ordered]
        limits = [h.entry.parallel or NO_LIMIT for h in ordered]
        try:
            index = int(
                self._take(keys=keys, args=[ticket, self.store.lease_ms, *limits])
            )
        except (redis.ConnectionError, redis.TimeoutError):
            self.store.check()  # raises StoreUnavailable: 503, as for stream slots
            raise
        if not index:
            return None
        return ordered[index - 1]

    def _serve(
        self,
        host: Host,
        body: dict[str, Any],
        ticket: str,
        counted: bool,
        attempt: Callable[[Upstream, bool], T],
    ) -> T:
        conv = conversation(body)
        gauge = metrics.UPSTREAM_IN_FLIGHT.labels(host.name)
        gauge.inc()
        try:
            if conv is not None:
                self.store.redis.set(conv, host.name, ex=CONVERSATION_TTL_S)
            return attempt(host.upstream, True)
        finally:
            gauge.dec()
            if counted:
                # On one connection: the slot is free before anyone is woken.
                self.store.release(Lease((inflight_key(host.name),), ticket), _WAKE)

    def _enqueue(self, model: str, ticket: str) -> Lease:
        try:
            lease = self.store.lease([(QUEUE_ALL, self.max_queue)])
        except Full:
            raise Unavailable(
                f"{self.max_queue} requests are already waiting for a free Ollama "
                "host (CHATSVC_MAX_QUEUE); try again shortly",
                retry_after=5,
            ) from None
        order = f"{PREFIX}queue:order:{canonical(model)}"
        seq = self.store.redis.incr(QUEUE_SEQ)
        self.store.redis.zadd(order, {lease.member: seq})
        metrics.QUEUE_WAITING.inc()
        return lease

    def _dequeue(self, lease: Lease, model: str) -> None:
        metrics.QUEUE_WAITING.dec()
        # The order at once, so that the next in line need not wait for the lease
        # to lapse; then wake it: it may take a slot still free.
        order = f"{PREFIX}queue:order:{canonical(model)}"
        self.store.release(lease, ("ZREM", order, lease.member), _WAKE)

    def _listen(self) -> None:
        """Wake this process's queued requests when any process frees a slot."""
        while not self._stop.is_set():
            try:
                pubsub = self.store.redis.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True
                )
                try:
                    pubsub.subscribe(FREED)
                    while not self._stop.is_set():
                        if pubsub.get_message(timeout=1.0) is not None:
                            with self._freed:
                                self._wakes += 1
                                self._freed.notify_all()
                finally:
                    pubsub.close()
            except redis.RedisError:
                self._stop.wait(1.0)  # the store is away: the queue polls meanwhile

    # -- health and discovery -------------------------------------------------------

    def _changed(self, host: Host) -> None:
        """Its models changed through chatsvc: read them, and tell every process."""
        self._read_logged(host)
        with contextlib.suppress(redis.RedisError):  # they read every DISCOVERY_S
            self.store.redis.incr(MODELS_CHANGED)

    def _refresh(self, max_age_s: float = 1.0) -> None:
        """Before a 404: read the lists again if models changed through any
        process, and those older than max_age_s (a pull behind chatsvc's back)."""
        try:
            version = self.store.redis.get(MODELS_CHANGED)
        except redis.RedisError:
            version = self._version
        now = time.monotonic()
        for host in self.hosts:
            if host.up and (version != self._version or now - host.read_at > max_age_s):
                self._read_logged(host)
        self._version = version

    def _failed(
        self, host: Host, error: ChatsvcError, verdict: str | None = None
    ) -> None:
        verdict = verdict or _verdict(error)
        if self.single:
            return  # one host is always tried: today's errors, as they were
        if verdict == "down":
            self._down(host, str(error.message))
        elif verdict == "busy":
            retry = error.get_headers()
            seconds = next((float(v) for k, v in retry if k == "Retry-After"), 0.0)
            host.busy_until = time.monotonic() + (seconds or self.probe_s)
        elif verdict == "gone":
            host.next_read = 0.0  # read its models again at once
            host.wake.set()

    def _down(self, host: Host, why: str) -> None:
        with self._lock:
            if not host.up:
                return
            host.up = False
            host.next_read = time.monotonic() + host.probe_s
        metrics.UPSTREAM_UP.labels(host.name).set(0)
        log.warning("chatsvc: Ollama host %s is down: %s", host.name, why)
        host.wake.set()

    def _watch(self, host: Host) -> None:
        """Read its models at start and every CHATSVC_DISCOVERY_S; probe it if down."""
        while not self._stop.is_set():
            delay = host.next_read - time.monotonic()
            if delay > 0:
                host.wake.wait(delay)
                host.wake.clear()
                continue
            self._read_logged(host)

    def _read_logged(self, host: Host) -> None:
        try:
            self._read(host)
        except Exception:  # a bug must not end discovery for the host
            log.exception("chatsvc: reading host %s failed", host.name)
            host.next_read = time.monotonic() + self.discovery_s

    def _read(self, host: Host) -> None:
        try:
            tags = host.upstream.request("GET", "/api/tags", timeout=5.0).json()
            ps = host.upstream.request("GET", "/api/ps", timeout=5.0).json()
        except ChatsvcError as error:
            if _verdict(error) == "down":
                if host.up:
                    self._down(host, error.message)
                else:  # still down: probe less often, up to a minute
                    host.probe_s = next_probe(host.probe_s)
                    host.next_read = time.monotonic() + host.probe_s
            else:  # slow (loading, a long prompt) is not down
                host.next_read = time.monotonic() + self.discovery_s
            return
        host.models = frozenset(_names(tags))
        host.loaded = frozenset(_names(ps))
        host.read_at = time.monotonic()
        host.next_read = host.read_at + self.discovery_s
        if not host.up:
            host.probe_s = self.probe_s
            host.up = True
            log.warning("chatsvc: Ollama host %s answers again", host.name)
        metrics.UPSTREAM_UP.labels(host.name).set(1)


def _names(answer: Any) -> list[str]:
    models = answer.get("models") if isinstance(answer, dict) else None
    return [
        canonical(str(m.get("name") or m.get("model")))
        for m in models or []
        if isinstance(m, dict) and (m.get("name") or m.get("model"))
    ]


class _Leg(Stream):
    """One host's part of a _in_turn: it writes into the client's stream.

    Its lines carry the host's name; its "success" is kept for _in_turn to pass
    on (or not); its socket is the client's stream's, so a hang-up reaches it.
    """

    def __init__(self, outer: Stream, name: str) -> None:
        super().__init__()
        self.outer = outer
        self.name = name
        self.success: dict[str, Any] = {"status": "success"}

    def put(self, event: Any) -> None:
        self.outer.put(
            {**event, "host": self.name} if isinstance(event, dict) else event
        )

    def put_last(self, part: Any) -> None:
        self.done = True
        self.success = dict(part) if isinstance(part, dict) else self.success

    def attach(self, sock: socket.socket) -> None:
        self.outer.attach(sock)
