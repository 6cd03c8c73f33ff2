"""The shared store against the embedded valkey-server: leases, limits, outages."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from chatsvc.errors import StoreUnavailable, StreamsFull, TooManyStreams
from chatsvc.simulator import Simulator
from chatsvc.store import (
    Embedded,
    EmbeddedStoreError,
    Full,
    Lease,
    Slots,
    Store,
    public_url,
)


@pytest.fixture
def stores(store_url: str) -> Iterator[Any]:
    """stores(lease_s=30) -> a Store on the embedded server, closed after the test."""
    made: list[Store] = []

    def make(lease_s: float = 30, url: str = store_url) -> Store:
        made.append(Store(url, lease_s))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def raw(store_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(store_url, decode_responses=True) as client:
        yield client


def soon(check: Callable[[], bool]) -> bool:
    """check(), allowing the store a moment: a release is written and not waited
    for (chatsvc.store._Line), so another connection may look before it has run."""
    deadline = time.monotonic() + 1.0
    while not check() and time.monotonic() < deadline:
        time.sleep(0.005)
    return check()


def store_up() -> float | None:
    return REGISTRY.get_sample_value("chatsvc_store_up")


def test_a_lease_holds_every_limit_or_none(stores: Any, raw: redis.Redis) -> None:
    store = stores()
    held = [store.lease([("t:a", 3), ("t:b", 2)]) for _ in range(2)]
    with pytest.raises(Full) as full:
        store.lease([("t:a", 3), ("t:b", 2)])
    assert full.value.key == "t:b"
    # All or nothing: the refused lease left no member in t:a either.
    assert raw.zcard("t:a") == 2 and raw.zcard("t:b") == 2
    third = store.lease([("t:a", 3)])
    with pytest.raises(Full) as full:
        store.lease([("t:a", 3), ("t:c", 5)])
    assert full.value.key == "t:a" and raw.zcard("t:c") == 0
    for lease in [*held, third]:
        store.release(lease)
    assert soon(lambda: raw.zcard("t:a") == 0 and raw.zcard("t:b") == 0)


def test_release_frees_the_slot_once(stores: Any, raw: redis.Redis) -> None:
    store = stores()
    first = store.lease([("t:one", 1)])
    with pytest.raises(Full):
        store.lease([("t:one", 1)])
    store.release(first)
    second = store.lease([("t:one", 1)])
    store.release(first)  # a second release of the same lease changes nothing
    assert raw.zrange("t:one", 0, -1) == [second.member]


def test_leases_are_atomic_across_threads_and_processes_stores(
    stores: Any, raw: redis.Redis
) -> None:
    # Two Store objects stand for two worker processes, 40 threads each racing.
    pair, limit = [stores(), stores()], 7
    start = threading.Barrier(80)
    won: list[Lease] = []
    refused: list[str] = []

    def take(store: Store) -> None:
        start.wait()
        try:
            won.append(store.lease([("t:race", limit), ("t:other", 100)]))
        except Full as full:
            refused.append(full.key)

    threads = [threading.Thread(target=take, args=(pair[i % 2],)) for i in range(80)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == limit and refused == ["t:race"] * (80 - limit)
    # Each thread read its own reply off its process's shared connection.
    assert sorted(lease.member for lease in won) == sorted(raw.zrange("t:race", 0, -1))


def test_expiry_is_on_the_store_clock(stores: Any, raw: redis.Redis) -> None:
    store = stores(lease_s=30)
    lease = store.lease([("t:clock", 1)])
    seconds, micros = raw.time()
    now_ms = seconds * 1000 + micros // 1000
    score = raw.zscore("t:clock", lease.member)
    assert score is not None and 29_000 < score - now_ms <= 30_000
    # The set itself goes away with its last lease.
    assert 29_000 < raw.pttl("t:clock") <= 30_000


def test_live_leases_are_renewed(stores: Any, raw: redis.Redis) -> None:
    store = stores(lease_s=0.6)  # renewed every 0.2 s
    lease = store.lease([("t:renew", 1), ("t:renew2", 1)])
    time.sleep(1.5)  # more than twice the lease
    for key in lease.keys:
        assert raw.zscore(key, lease.member) is not None
    with pytest.raises(Full):
        stores().lease([("t:renew", 1)])


def test_one_renewal_covers_every_lease_in_one_call(
    stores: Any, raw: redis.Redis
) -> None:
    store = stores(lease_s=3600)  # the renewer will not run during the test
    leases = [store.lease([("t:all", 10), (f"t:each{i}", 1)]) for i in range(5)]
    time.sleep(0.01)
    before = {lease.member: raw.zscore("t:all", lease.member) for lease in leases}
    raw.config_resetstat()
    store.renew()
    stats = raw.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_zadd"]["calls"] == 10  # inside the one script
    for lease in leases:
        assert raw.zscore("t:all", lease.member) > before[lease.member]  # type: ignore[operator]


def test_renewal_does_not_bring_back_a_released_lease(
    stores: Any, raw: redis.Redis
) -> None:
    store = stores(lease_s=3600)
    lease = store.lease([("t:gone", 1)])
    raw.zrem("t:gone", lease.member)  # as a release racing the renewer would
    store.renew()
    assert raw.zcard("t:gone") == 0


def test_a_lease_no_longer_renewed_expires(stores: Any) -> None:
    dead = stores(lease_s=0.5)
    dead.lease([("t:expire", 1)])
    dead.close()  # its renewer stops, as when a worker is SIGKILLed
    stopped = time.monotonic()
    other = stores()
    with pytest.raises(Full):
        other.lease([("t:expire", 1)])
    while True:
        try:
            other.lease([("t:expire", 1)])
            break
        except Full:
            assert time.monotonic() - stopped < 1.5
            time.sleep(0.02)
    # The expiry counts from the last renewal, up to 0.5 s before the stop.
    assert time.monotonic() - stopped > 0.2


def test_slots_map_limits_to_errors(stores: Any, raw: redis.Redis) -> None:
    slots = Slots(stores(), max_total=3, max_per_client=2)
    mine = [slots.acquire("sk-secret-key"), slots.acquire("sk-secret-key")]
    with pytest.raises(TooManyStreams) as per_client:
        slots.acquire("sk-secret-key")
    assert per_client.value.status == 429 and per_client.value.retry_after == 1
    assert "2 streams open" in per_client.value.message
    theirs = slots.acquire("10.0.0.9")
    with pytest.raises(StreamsFull) as total:
        slots.acquire("10.0.0.10")
    assert total.value.status == 503 and total.value.retry_after == 1
    assert "3 streams open" in total.value.message
    # Clients are keyed by a hash: no API key or address is kept in clear.
    keys = raw.keys("*")
    assert "chatsvc:slots:all" in keys and len(keys) == 3
    assert not any("secret" in k or "10.0.0" in k for k in keys)
    for lease in [*mine, theirs]:
        slots.release(lease)
    assert soon(lambda: raw.keys("*") == [])


def test_a_limit_of_one_is_one_stream(stores: Any) -> None:
    store = stores()
    slots = Slots(store, max_total=2, max_per_client=1)
    lease = slots.acquire("10.0.0.1")
    with pytest.raises(TooManyStreams) as per_client:
        slots.acquire("10.0.0.1")
    assert "you already have 1 stream open;" in per_client.value.message
    with pytest.raises(StreamsFull) as total:
        Slots(store, max_total=1, max_per_client=1).acquire("10.0.0.2")
    assert "the server has 1 stream open;" in total.value.message
    slots.release(lease)


def test_a_claim_is_answered_once_by_whoever_needs_it_first(
    stores: Any, raw: redis.Redis
) -> None:
    store = stores()
    slots = Slots(store, max_total=1, max_per_client=1)
    first = slots.ask("10.0.0.1")
    second = slots.ask("10.0.0.2")  # sent before the first's answer is read
    assert first.lease() == first.lease()  # read once; the same lease after
    with pytest.raises(StreamsFull):
        second.lease()
    second.release()  # refused: nothing to give back
    assert raw.zcard(Slots.ALL) == 1
    first.release()
    assert soon(lambda: raw.zcard(Slots.ALL) == 0)
    # Released without ever being read (the client left before its pump ran):
    # the answer is read then, the slot given back, the connection clean.
    unread = slots.ask("10.0.0.1")
    unread.release()
    assert soon(lambda: raw.zcard(Slots.ALL) == 0)
    slots.release(slots.acquire("10.0.0.3"))
    assert soon(lambda: raw.keys("*") == [])


def test_a_claim_survives_a_store_that_lost_its_scripts(
    stores: Any, raw: redis.Redis
) -> None:
    store = stores()
    store.release(store.lease([("t:s", 1)]))  # the script is loaded and cached
    raw.script_flush()
    lease = store.lease([("t:s", 1)])  # NOSCRIPT: loaded again, then taken
    assert raw.zrange("t:s", 0, -1) == [lease.member]
    with pytest.raises(Full):
        store.lease([("t:s", 1)])
    store.release(lease)


def test_an_ask_whose_connection_breaks_before_its_answer_is_asked_again(
    stores: Any, raw: redis.Redis
) -> None:
    store = stores()
    store.release(store.lease([("t:lost", 1)]))  # the connection is open
    assert soon(lambda: raw.zcard("t:lost") == 0)  # and the release has run
    raw.client_pause(5000, all=False)  # scripts wait; CLIENT KILL does not
    try:
        claim = store.ask([("t:lost", 1)])
        killed = raw.client_kill_filter(_type="normal", skipme=True)
    finally:
        raw.client_unpause()
    assert killed >= 1
    lease = claim.lease()  # the script never ran: asked again, on a new connection
    assert raw.zrange("t:lost", 0, -1) == [lease.member]
    with pytest.raises(Full):
        store.lease([("t:lost", 1)])
    store.release(lease)
    assert store.lease([("t:lost", 1)]).member != lease.member


def test_public_url_hides_the_password() -> None:
    assert public_url("rediss://user:pw@store:6380/1") == "rediss://store:6380/1"
    assert public_url("unix:///run/s.sock") == "unix:///run/s.sock"


def test_unreachable_store_is_503_and_down(stores: Any, tmp_path: Path) -> None:
    store = stores(url=f"unix://{tmp_path}/nothing.sock")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as down:
        store.lease([("t:x", 1)])
    assert time.monotonic() - started < 1
    assert down.value.status == 503 and down.value.retry_after
    assert down.value.message == (
        f"chatsvc cannot reach its store at unix://{tmp_path}/nothing.sock"
    )
    with pytest.raises(StoreUnavailable):
        store.check()
    assert store_up() == 0
    store.renew()  # logged, not raised


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[Any]:
    """An embedded server on a fixed socket, to stop and start again."""
    folder = tmp_path / "store"
    servers = [Embedded(folder)]
    yield servers
    servers[-1].stop()


def test_store_down_then_back(
    restartable: list[Embedded], make_app: Any, sim: Simulator
) -> None:
    server = restartable[0]
    app = make_app(CHATSVC_REDIS_URL=server.url)
    client = app.test_client()
    store: Store = app.extensions["chatsvc"].store
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    assert client.get("/readyz").status_code == 200
    # A stream open when the store goes away runs on to its end.
    sim.settings.interval = 0.05
    open_stream = client.post("/api/chat", json=chat, buffered=False)
    assert open_stream.status_code == 200
    chunks = open_stream.response  # type: ignore[attr-defined]
    next(chunks)
    server.stop()

    refused = client.post("/api/chat", json=chat)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.get_json() == {
        "error": f"chatsvc cannot reach its store at {server.url}"
    }
    assert client.get("/readyz").status_code == 503
    assert store_up() == 0
    store.renew()  # the renewer's failure is logged, not raised
    rest = b"".join(chunks)  # release at its end must not raise into the relay
    assert b'"done":true' in rest
    open_stream.close()

    restartable.append(Embedded(server.folder))
    assert client.get("/readyz").status_code == 200
    assert store_up() == 1
    sim.settings.interval = 0.0
    again = client.post("/api/chat", json=chat)
    assert again.status_code == 200 and b'"done":true' in again.data


def test_an_embedded_store_that_cannot_start_says_why(tmp_path: Path) -> None:
    folder = tmp_path / ("x" * 120)  # past a Unix socket path's 108 bytes
    with pytest.raises(EmbeddedStoreError, match="the embedded store did not start"):
        Embedded(folder)
    assert not folder.exists()


def test_a_store_over_tls(
    stores: Any, store_url: str, raw: redis.Redis, tls_front: Any
) -> None:
    # rediss://: the shared line writes through the ssl object, never past it.
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(store_url.removeprefix("unix://"))
        return sock

    port, ca_file = tls_front(connect)
    store = stores(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}")
    slots = Slots(store, max_total=1, max_per_client=1)
    lease = slots.acquire("a")
    with pytest.raises(StreamsFull):
        slots.acquire("b")
    slots.release(lease)
    assert soon(lambda: raw.zcard(Slots.ALL) == 0)
    slots.release(slots.acquire("b"))
