"""Resumable streams: record a stream's chunks in the store, replay and follow them.

A resumable stream's generation does not hang on any response. A recorder thread
moves the stream's events into a Redis Stream, and every response, the original one
included, is a reader of that stream, so the client that started it may leave and
come back on any worker or instance. For a stream <id> the store holds:

    chatsvc:rs:<id>       the Redis Stream: entry 0-N is chunk N, then the ending
    chatsvc:rs:<id>:meta  route, model, owner (a hash of the API key), state
    chatsvc:rs:<id>:seen  refreshed by attached readers; expires GRACE after the last
    chatsvc:rs:<id>:stop  set by DELETE; the recorder reads it with every batch
    chatsvc:rs:<id>:live  kept by the recorder's process while it generates

An entry holds a batch of upstream chunks (as the recorder got them at once), not
framed bytes, so that each reader frames them in its own format; its id is the
number of its last chunk, so a reader's position is exact within a batch too. The
original response reads the batches from the recorder's hand directly (no round
trip), everyone else from the store. Expiry is the store's: keys live TTL after
their last write, and a recorder that is alive writes at least every second.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

import redis
from flask import Response, current_app, g, request
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatsvc import relay
from chatsvc.endpoints import RESUMABLE, Endpoint, SseEvent
from chatsvc.errors import BadRequest, NotFound, StoreUnavailable
from chatsvc.framing import MEDIA_TYPES, Framer
from chatsvc.store import PREFIX
from chatsvc.upstream import Event, Signal

log = logging.getLogger("chatsvc.resume")

MAXLEN = 200_000  # entries kept per stream: far more than any answer has chunks
TICK_S = 0.25  # how often a quiet recorder reads its control keys
REFRESH_S = 1.0  # how often readers say they are attached, at most
STOP_CHANNEL = f"{PREFIX}rs:stop"
WRITE_S = 0.02  # how often the writer writes, at most: a follower's extra delay
READ_COUNT = 1000  # entries per XREAD
DAY_MS = 86_400_000  # how long an ended stream's meta outlives it, to say "expired"
LIVE_MS = round(REFRESH_S * 3000)  # a generating process renews it every second
_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)

UNKNOWN = "there is no resumable stream {id}"
EXPIRED = (
    "the resumable stream {id} has expired: an ended stream stays readable for "
    "CHATSVC_RESUME_TTL_S seconds; send the request again"
)
STOPPED = "this stream was stopped (DELETE /api/streams/{id})"
ABANDONED = (
    "nobody read this stream for CHATSVC_RESUME_GRACE_S ({grace:g} s), so chatsvc "
    "stopped generating it; send the request again"
)
CANCELLED = "this stream was cancelled before its end; send the request again"
GAP = "chunks after {after} of this stream are no longer kept"
GONE = (
    "the chatsvc process that was generating this stream stopped before its end; "
    "send the request again"
)
LOST = "chatsvc lost its store in the middle of this stream; send the request again"


@dataclass(frozen=True)
class Keys:
    id: str

    @property
    def stream(self) -> str:
        return f"{PREFIX}rs:{self.id}"

    @property
    def meta(self) -> str:
        return f"{PREFIX}rs:{self.id}:meta"

    @property
    def seen(self) -> str:
        return f"{PREFIX}rs:{self.id}:seen"

    @property
    def live(self) -> str:
        return f"{PREFIX}rs:{self.id}:live"

    @property
    def stop(self) -> str:
        return f"{PREFIX}rs:{self.id}:stop"


class Streams:
    """This process's side of resumable streams: connections, writer, stop listener.

    Readers block in XREAD, so they get a pool of their own, sized for every
    stream of the process, rather than the few connections that carry leases.
    One writer thread writes every recorder's batches in one round trip, and one
    listener hears DELETE from any worker or instance at once (pub/sub).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.grace_s: float = config["CHATSVC_RESUME_GRACE_S"]
        self.grace_ms = max(1, round(self.grace_s * 1000))
        self.ttl_ms = max(1, round(config["CHATSVC_RESUME_TTL_S"] * 1000))
        self.heartbeat_s: float = config["CHATSVC_HEARTBEAT_S"]
        self.refresh_s = min(REFRESH_S, self.grace_s / 4)
        pool = redis.BlockingConnectionPool.from_url(
            config["CHATSVC_REDIS_URL"],
            max_connections=2 * config["CHATSVC_MAX_STREAMS"] + 16,
            timeout=5.0,
            socket_timeout=REFRESH_S + 5.0,  # longer than any XREAD block
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
            protocol=2,
        )
        self.redis = redis.Redis(connection_pool=pool)
        self.url = relay.state().store.url
        self.recorders: dict[str, _Recorder] = {}  # this process's, by stream id
        self._work: SimpleQueue[_Recorder] = SimpleQueue()
        for target, name in ((self._write_forever, "writer"),
                             (self._listen_forever, "stops")):  # fmt: skip
            thread = threading.Thread(target=target, name=f"chatsvc-resume-{name}")
            thread.daemon = True
            thread.start()

    def unreachable(self) -> StoreUnavailable:
        return StoreUnavailable(f"chatsvc cannot reach its store at {self.url}")

    def submit(self, recorder: _Recorder) -> None:
        self._work.put(recorder)

    def _write_forever(self) -> None:
        while True:
            # A round at most every WRITE_S: the batches of many chunks and streams
            # share one round trip, and the writer is not woken for each chunk.
            time.sleep(WRITE_S)
            batch = {self._work.get(): None}
            try:
                while True:
                    batch[self._work.get_nowait()] = None
            except Empty:
                pass
            self._write(list(batch))

    def _write(self, recorders: list[_Recorder]) -> None:
        """One round trip for everything the recorders queued since the last."""
        pipe = self.redis.pipeline(transaction=False)
        checks = []
        for recorder in recorders:
            if recorder.queue(pipe):
                checks.append((recorder, len(pipe)))
                pipe.mget(recorder.keys.seen, recorder.keys.stop)
        if not len(pipe):
            return
        try:
            replies = pipe.execute()
        except Exception as exc:  # the store is away, or a bug: end them, loudly
            log.warning("chatsvc: resumable streams lost their store: %r", exc)
            for recorder in recorders:
                recorder.interrupt("lost")
            return
        for recorder, at in checks:
            seen, stop = replies[at]
            if stop is not None:
                recorder.interrupt("stopped")
            elif seen is None and not recorder.attached():
                recorder.interrupt("abandoned")

    def _listen_forever(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True
                )
                pubsub.subscribe(STOP_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=REFRESH_S)
                    recorder = message and self.recorders.get(message["data"])
                    if recorder:
                        recorder.interrupt("stopped")
            except Exception as exc:  # the stop key still reaches the writer
                log.warning("chatsvc: not hearing DELETE at once: %r", exc)
                time.sleep(1.0)


_made = threading.Lock()


def _streams() -> Streams:
    # Made on first use, in the worker: its threads would not survive the fork.
    extensions = current_app.extensions
    if "chatsvc.resume" not in extensions:
        with _made:
            if "chatsvc.resume" not in extensions:
                extensions["chatsvc.resume"] = Streams(relay.state().config)
    return extensions["chatsvc.resume"]  # type: ignore[no-any-return]


def _owner() -> str:
    """Who may read a stream: a hash of the API key; anyone with the id without keys."""
    key: str | None = g.get("api_key")
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


# -- recording -------------------------------------------------------------------


@dataclass
class Batch:
    """Chunks numbered first, first + 1, …, then maybe the error that ends them."""

    first: int
    parts: list[Any] = field(default_factory=list)
    error: str | None = None

    @property
    def last(self) -> int:
        return self.first + len(self.parts) - (self.error is None)


def record(run: relay.Run) -> Callable[[Event, str], Response]:
    """Register run as resumable; the returned call starts it and answers first."""
    streams = _streams()
    keys = Keys(secrets.token_urlsafe(24))  # 192 random bits
    meta: dict[Any, Any] = {
        "path": run.endpoint.path,
        "model": run.model,
        "owner": _owner(),
        "state": "live",
    }
    pipe = streams.redis.pipeline(transaction=False)
    pipe.hset(keys.meta, mapping=meta)
    pipe.pexpire(keys.meta, streams.ttl_ms)
    pipe.set(keys.live, 1, px=LIVE_MS)
    try:
        pipe.execute()
    except _UNREACHABLE:
        raise streams.unreachable() from None
    # From here on the client's hang-up no longer cancels: the grace period does.
    if run.unwatch is not None:
        run.unwatch()
        run.unwatch = None

    def respond(first: Event, fmt: str) -> Response:
        framer = Framer(fmt, run.endpoint, numbered=True)
        original = _Original(framer, run.model, streams.heartbeat_s)
        recorder = _Recorder(streams, keys, run, original)
        threading.Thread(
            target=recorder.main, args=(first,), name="chatsvc-recorder", daemon=True
        ).start()
        headers = {**relay.STREAM_HEADERS, "Chatsvc-Stream": f"/api/streams/{keys.id}"}
        return relay.Streamed(
            original.serve(recorder),
            original.direct,
            content_type=MEDIA_TYPES[fmt],
            headers=headers,
        )

    return respond


class _Entries(Framer):
    """Collects a batch of events for the store instead of one format's bytes."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__("ndjson", endpoint)
        self.parts: list[Any] = []
        self.error_message: str | None = None
        self.ended = False  # the last chunk or an error is in

    def chunk(self, part: Any) -> bytes:
        self.parts.append(part)
        self.ended = self.endpoint.is_last(part)
        return b""

    def error(self, message: str) -> bytes:
        self.error_message = message
        self.ended = True
        return b""

    def heartbeat(self, model: str, now_ns: int) -> bytes:
        return b""  # each reader sends its own

    def take(self, first: int) -> Batch | None:
        if not self.parts and self.error_message is None:
            return None
        batch = Batch(first, self.parts, self.error_message)
        self.parts, self.error_message = [], None
        return batch


class _Original:
    """The response that started a resumable stream, written as its chunks are
    recorded (on the body loop's thread), not handed to its own thread.
    """

    def __init__(self, framer: Framer, model: str, heartbeat_s: float) -> None:
        self.framer = framer
        self.model = model
        self.heartbeat_s = heartbeat_s
        self.position = 0
        self.last_write = time.monotonic()
        self._head = framer.start()
        self._out: SimpleQueue[bytes | None] = SimpleQueue()  # None: the end
        self._write: relay.Writer | None = None
        self._live = False  # writing directly: the response has begun
        self._lock = threading.Lock()

    def direct(self, write: Callable[[bytes], object]) -> None:
        """The server's write(), known once the status is sent."""
        self._write = relay.Writer(write, self._out.put)

    def send(self, batch: Batch) -> None:
        data, self.position, ended = _frame_batch(self.framer, batch, self.position)
        self._emit(data, ended)

    def tick(self) -> None:
        """A heartbeat, if nothing was sent for a heartbeat interval."""
        if time.monotonic() - self.last_write >= self.heartbeat_s:
            self._emit(self.framer.heartbeat(self.model, time.time_ns()), False)

    def _emit(self, data: bytes, ended: bool) -> None:
        with self._lock:
            data, self._head = self._head + data, b""
            if data:
                try:
                    if self._live:
                        assert self._write is not None
                        self._write(data)
                    else:
                        self._out.put(data)
                except OSError:  # the client is gone
                    ended = True
                self.last_write = time.monotonic()
        if ended:
            self._out.put(None)

    def serve(self, recorder: _Recorder) -> Iterator[bytes]:
        """The response's body: what could not be written directly, and the end."""
        try:
            if self._write is not None:
                with self._lock:  # from now on, written directly, after the queued
                    queued = []
                    with contextlib.suppress(Empty):
                        while True:
                            queued.append(self._out.get_nowait())
                    for item in queued:
                        if item is None:
                            return
                        self._write(item)
                    self._live = True
            while (item := self._out.get()) is not None:
                if self._write is None:
                    yield item
                else:
                    self._write.send(item)
        except OSError:
            pass  # the client is gone
        finally:
            recorder.detach()


class _Recorder:
    """Moves one run's events on: to the original response and to the writer.

    It never waits for the store: the writer reports back through interrupt().
    """

    def __init__(
        self, streams: Streams, keys: Keys, run: relay.Run, original: _Original
    ) -> None:
        self.streams = streams
        self.keys = keys
        self.run = run
        self.entries = _Entries(run.endpoint)
        self.number = 0  # the last chunk handed on
        self.next_refresh = 0.0
        self.next_check = 0.0
        self.reason: str | None = None  # stopped, abandoned or lost
        self.state: str | None = None  # set once the ending is queued
        self._pending: list[Batch] = []
        self._end: Batch | None = None  # handed on once the slot is free
        self._lock = threading.Lock()
        # The original response while it is attached, and until when it counts
        # as a reader.
        self.original: _Original | None = original
        self.attached_until = math.inf

    def main(self, first: Event) -> None:
        self.streams.recorders[self.keys.id] = self
        stream = self.run.stream
        try:
            # The body loop records each chunk on its own thread; this one only
            # ticks while the stream is quiet and hears how it was stopped.
            stream.deliver_to(self._record, first)
            while (item := stream.take(TICK_S)) is not Signal.ENDED:
                stream.put(item)  # type: ignore[arg-type]  # a tick, or why it ends
        except Exception:  # a bug must still end the generation and the count
            log.exception("chatsvc: resumable stream %s failed", self.keys.id)
            self._hand(Batch(self.number + 1, error=LOST))
        finally:
            stream.detach()
            self.streams.recorders.pop(self.keys.id, None)
            self.run.close()
            if self._end is not None:  # the slot is free before the last line
                self._hand(self._end)
            relay._end_stream(self.run)

    def _record(self, event: Event) -> bool:
        """The stream's sink: one event to the original response and the writer."""
        run = self.run
        _, ended = relay._frame(run, self.entries, event)
        state = "ended"
        if ended and not self.entries.ended:  # interrupted: say why
            message, run.outcome, state = _ENDINGS[self.reason or "cancelled"]
            grace = self.streams.grace_s
            self.entries.error(message.format(id=self.keys.id, grace=grace))
        batch = self._push(hand=not ended)
        if ended:
            self._end = batch
        if run.ttft is None and run.chunks:
            run.ttft = time.monotonic() - run.started
        original = self.original
        if event is Signal.SILENCE and original is not None:
            original.tick()
        if ended:
            self.state = state
            run.stream.tell(Signal.ENDED)
        self.streams.submit(self)
        return ended

    def interrupt(self, reason: str) -> None:
        """Stop the generation (from the writer or the stop listener)."""
        if self.reason is None:
            self.reason = reason
        # Hangs up on Ollama at once, and wakes the recorder with CANCELLED.
        self.run.stream.cancel()

    def attached(self) -> bool:
        return time.monotonic() < self.attached_until

    def detach(self) -> None:
        """The original response is over: the grace period starts now."""
        self.original = None
        self.attached_until = time.monotonic() + self.streams.grace_s

    def _hand(self, batch: Batch) -> None:
        original = self.original
        if original is not None:
            original.send(batch)

    def _push(self, hand: bool = True) -> Batch | None:
        batch = self.entries.take(self.number + 1)
        if batch is None:
            return None
        self.number = batch.last
        if hand:
            self._hand(batch)
        if self.reason != "lost":
            with self._lock:
                last = self._pending[-1] if self._pending else None
                if last is not None and last.error is None:
                    # One store entry for all that came since the writer's last
                    # round (the original response has framed batch already).
                    last.parts += batch.parts
                    last.error = batch.error
                else:
                    self._pending.append(batch)
        return batch

    def queue(self, pipe: Any) -> bool:
        """On the writer's thread: queue what is pending; True if a check is due."""
        with self._lock:
            batches, self._pending = self._pending, []
        keys, ttl_ms = self.keys, self.streams.ttl_ms
        for batch in batches:
            _add(pipe, keys.stream, batch)
        if self.state is not None:
            pipe.hset(keys.meta, "state", self.state)
            pipe.pexpire(keys.stream, ttl_ms)
            # The meta outlives the chunks, so a late reader hears "expired".
            pipe.pexpire(keys.meta, ttl_ms + DAY_MS)
            pipe.delete(keys.seen, keys.stop)
            return False
        now = time.monotonic()
        if now >= self.next_refresh:
            # A live stream's keys live TTL past its last sign of life, so one
            # whose worker died goes away by itself.
            self.next_refresh = now + REFRESH_S
            pipe.pexpire(keys.stream, ttl_ms)
            pipe.pexpire(keys.meta, ttl_ms)
            pipe.set(keys.live, 1, px=LIVE_MS)
        # Readers and DELETE's key, a few times a second rather than per chunk
        # (DELETE is heard at once anyway, by pub/sub).
        if now < self.next_check:
            return False
        self.next_check = now + TICK_S
        return True


# reason: (the in-band message, the outcome, the state kept in the meta)
_ENDINGS = {
    "cancelled": (CANCELLED, "cancelled", "cancelled"),
    "stopped": (STOPPED, "cancelled", "stopped"),
    "abandoned": (ABANDONED, "abandoned", "abandoned"),
    "lost": (LOST, "cancelled", "lost"),
}


def _add(pipe: Any, key: str, batch: Batch) -> None:
    """XADD a batch: its chunks as one entry whose id is the last one's number."""
    parts = batch.parts
    if parts:
        if isinstance(parts[0], SseEvent):
            fields = {"s": _dumps([[p.data, p.event] for p in parts])}
        else:
            fields = {"c": _dumps(parts)}
        number = batch.first + len(parts) - 1
        pipe.xadd(key, fields, id=f"0-{number}", maxlen=MAXLEN, approximate=True)
    if batch.error is not None:
        number = batch.first + len(parts)
        pipe.xadd(key, {"x": batch.error}, id=f"0-{number}", maxlen=MAXLEN)


def _dumps(parts: list[Any]) -> str | bytes:
    raws = [getattr(part, "raw", None) for part in parts]
    if None in raws:
        return json.dumps(parts, separators=(",", ":"))
    return b"[" + b",".join(raws) + b"]"  # type: ignore[arg-type]  # Ollama's lines


# -- reading ---------------------------------------------------------------------


def _meta(streams: Streams, stream_id: str) -> tuple[Keys, dict[str, str]]:
    """The stream's keys and meta; 404 unless it exists and is the caller's."""
    keys = Keys(stream_id)
    if not _ID.match(stream_id):
        raise NotFound(UNKNOWN.format(id=stream_id))
    try:
        meta: dict[str, str] = streams.redis.hgetall(keys.meta)  # type: ignore[assignment]
        exists = streams.redis.exists(keys.stream)
    except _UNREACHABLE:
        raise streams.unreachable() from None
    # Another key's stream is answered exactly as one that does not exist.
    if not meta or not hmac.compare_digest(meta.get("owner", ""), _owner()):
        raise NotFound(UNKNOWN.format(id=stream_id))
    if not exists and meta.get("state") != "live":
        raise NotFound(EXPIRED.format(id=stream_id))
    return keys, meta


def _after() -> int:
    raw = request.args.get("after", request.headers.get("Last-Event-ID", "0"))
    if not raw.strip().isdigit():
        raise BadRequest("after (or Last-Event-ID) must be a chunk number, 0 or more")
    return int(raw)


def follow(stream_id: str, choose_format: Callable[[], str]) -> Response:
    """GET /api/streams/<id>: the chunks after N, then the rest as it comes."""
    streams = _streams()
    after = _after()
    keys, meta = _meta(streams, stream_id)
    endpoint = RESUMABLE[meta["path"]]
    fmt = "openai" if endpoint.openai else choose_format()
    source = _remote(streams, keys, after)
    return _response(keys, endpoint, meta.get("model", ""), fmt, after, source)


def stop(stream_id: str) -> None:
    """DELETE /api/streams/<id>: the recorder, wherever it runs, stops at once."""
    streams = _streams()
    keys, meta = _meta(streams, stream_id)
    if meta.get("state") != "live":
        return
    pipe = streams.redis.pipeline(transaction=False)
    # The message reaches the recorder's process at once; the key, checked with
    # every batch, covers a listener that was reconnecting.
    pipe.set(keys.stop, 1, px=streams.ttl_ms)
    pipe.publish(STOP_CHANNEL, keys.id)
    try:
        pipe.execute()
    except _UNREACHABLE:
        raise streams.unreachable() from None


def _response(
    keys: Keys,
    endpoint: Endpoint,
    model: str,
    fmt: str,
    after: int,
    source: Iterator[list[Batch]],
) -> Response:
    framer = Framer(fmt, endpoint, after=after, numbered=True)
    headers = {**relay.STREAM_HEADERS, "Chatsvc-Stream": f"/api/streams/{keys.id}"}
    return Response(
        _serve(framer, model, after, source),
        content_type=MEDIA_TYPES[fmt],
        headers=headers,
    )


def _serve(
    framer: Framer, model: str, after: int, source: Iterator[list[Batch]]
) -> Iterator[bytes]:
    """Frame the batches after chunk `after`; [] from source means a heartbeat."""
    head = framer.start()
    position = after
    try:
        for batches in source:
            out = [] if batches else [framer.heartbeat(model, time.time_ns())]
            ended = False
            for batch in batches:
                data, position, ended = _frame_batch(framer, batch, position)
                out.append(data)
                if ended:
                    break
            data = head + b"".join(out)
            head = b""
            if data:
                yield data
            if ended:
                return
    finally:
        source.close()  # type: ignore[attr-defined]


def _frame_batch(
    framer: Framer, batch: Batch, position: int
) -> tuple[bytes, int, bool]:
    """The bytes for what in batch comes after position; True once at the end."""
    if batch.first > position + 1:  # trimmed away: never a silent gap
        return framer.error(GAP.format(after=position)), position, True
    out = []
    number = batch.first
    for part in batch.parts:
        if number > position:
            out.append(framer.chunk(part))
            position = number
            if framer.endpoint.is_last(part):
                return b"".join(out), position, True
        number += 1
    if batch.error is not None and number > position:
        out.append(framer.error(batch.error))
        return b"".join(out), number, True
    return b"".join(out), position, False


def _remote(streams: Streams, keys: Keys, after: int) -> Iterator[list[Batch]]:
    """A reader's batches from the store: blocked in XREAD from its position."""
    position = after
    last = time.monotonic()
    next_refresh = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                next_refresh = now + streams.refresh_s
                pipe = streams.redis.pipeline(transaction=False)
                pipe.set(keys.seen, 1, px=streams.grace_ms)
                pipe.hget(keys.meta, "state")
                pipe.exists(keys.live)
                _, state, live = pipe.execute()
                if state is None:
                    yield [Batch(position + 1, error=EXPIRED.format(id=keys.id))]
                    return
                if state == "live" and not live:
                    yield [Batch(position + 1, error=GONE)]
                    return
            wake = min(next_refresh, last + streams.heartbeat_s)
            reply: Any = streams.redis.xread(
                {keys.stream: f"0-{position}"},
                count=READ_COUNT,
                block=max(1, round((wake - now) * 1000)),
            )
            entries = reply[0][1] if reply else []
            batches = [_decode(entry, fields) for entry, fields in entries]
            if batches:
                position = batches[-1].last
                last = time.monotonic()
                yield batches
            elif time.monotonic() - last >= streams.heartbeat_s:
                last = time.monotonic()
                yield []
    except _UNREACHABLE:
        yield [Batch(position + 1, error=LOST)]
    finally:
        # The moment this reader left starts the grace period, not its last refresh.
        try:
            streams.redis.set(keys.seen, 1, px=streams.grace_ms)
        except _UNREACHABLE:
            pass


def _decode(entry: str, fields: dict[str, str]) -> Batch:
    number = int(entry.partition("-")[2])
    if "x" in fields:
        return Batch(number, error=fields["x"])
    if "c" in fields:
        parts: list[Any] = json.loads(fields["c"])
    else:
        parts = [SseEvent(data, event) for data, event in json.loads(fields["s"])]
    return Batch(number - len(parts) + 1, parts)
