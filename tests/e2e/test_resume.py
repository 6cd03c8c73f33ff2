"""Resumable streams for real: two instances of two workers sharing redis-server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from chatsvc.simulator import Simulator
from tests.e2e.conftest import Gateway, start_gunicorn
from tests.e2e.test_shared_store import RedisServer, children, wait_until
from tests.e2e.test_streaming import paced, sse_events

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
GENERATE = {"model": "llama3.2", "prompt": "hi"}
OPENAI_CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
KEYS = ("k1-77aa", "k2-88bb")
GRACE_S = 2.0
TTL_S = 4.0
STREAM_PATH = re.compile(r"^/api/streams/[A-Za-z0-9_-]{32}$")


@dataclass
class Pair:
    store: RedisServer
    a: Gateway
    b: Gateway


@pytest.fixture(scope="module")
def pair(
    _simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("resume")
    store = RedisServer(folder)
    store.start()
    env = {
        "OLLAMA_HOST": _simulator.url,
        "CHATSVC_REDIS_URL": store.url,
        "CHATSVC_API_KEYS": ",".join(KEYS),
        "CHATSVC_RESUME_GRACE_S": str(GRACE_S),
        "CHATSVC_RESUME_TTL_S": str(TTL_S),
        "WEB_CONCURRENCY": "2",
    }
    a = start_gunicorn(folder / "a", env)
    b = start_gunicorn(folder / "b", env)
    yield Pair(store, a, b)
    for gw in (a, b):
        gw.stop(signal.SIGKILL)
    store.stop()


def auth(key: str = KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def start(
    gw: Gateway,
    path: str = "/api/chat",
    body: dict[str, Any] = CHAT,
    fmt: str = "ndjson",
    key: str | None = KEYS[0],
) -> requests.Response:
    headers = auth(key) if key else {}
    sep = "&" if "?" in path else "?"
    r = requests.post(
        f"{gw.url}{path}{sep}resumable=1&format={fmt}",
        json=body,
        headers=headers,
        stream=True,
        timeout=15,
    )
    assert r.status_code == 200, r.text
    return r


def follow(
    gw: Gateway,
    location: str,
    fmt: str = "ndjson",
    key: str | None = KEYS[0],
    **headers: str,
) -> requests.Response:
    hdrs = {**(auth(key) if key else {}), **headers}
    return requests.get(
        f"{gw.url}{location}{'&' if '?' in location else '?'}format={fmt}",
        headers=hdrs,
        stream=True,
        timeout=15,
    )


def lines(r: requests.Response) -> Iterator[dict[str, Any]]:
    for line in r.iter_lines():
        yield json.loads(line)


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c.get("message", {}).get("content", "") for c in chunks)


def answers(gw: Gateway) -> bool:
    try:
        return requests.get(gw.url + "/healthz", timeout=2).ok
    except requests.RequestException:
        return False


def streams_total(gw: Gateway, outcome: str) -> float:
    text = requests.get(gw.url + "/metrics", headers=auth(), timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "chatsvc_streams_total" and s.labels.get("outcome") == outcome
    )


# -- numbering, header, and nothing changed without ?resumable=1 ------------------


def test_sse_numbers_every_event_and_streams(pair: Pair, sim: Simulator) -> None:
    duration = paced(sim, chunks=10, interval=0.1)
    sent = time.monotonic()
    r = start(pair.a, fmt="sse")
    location = r.headers["Chatsvc-Stream"]
    assert STREAM_PATH.match(location)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    events = []
    for event in sse_events(r):
        if "data" in event:
            if not events:
                first_at = time.monotonic() - sent
            events.append(event)
    assert first_at < duration / 2  # streamed, not collected
    assert [e["id"] for e in events] == [str(n) for n in range(1, 12)]
    assert events[-1]["event"] == "done"
    assert json.loads(events[-1]["data"])["done"] is True


def test_v1_numbers_each_data_event(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=5, interval=0.01)
    r = start(pair.a, "/v1/chat/completions", {**OPENAI_CHAT, "stream": True})
    events = [e for e in sse_events(r) if "data" in e]
    assert events[-1]["data"] == "[DONE]"
    assert [e["id"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    # Replayed on the other instance: the same events, numbered the same.
    again = follow(pair.b, r.headers["Chatsvc-Stream"] + "?after=2")
    assert again.headers["Content-Type"].startswith("text/event-stream")
    rest = [e for e in sse_events(again) if "data" in e]
    assert rest == events[2:]


def test_generate_and_completions_are_resumable(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=4, interval=0.01)
    r = start(pair.a, "/api/generate", GENERATE)
    chunks = list(lines(r))
    assert chunks[-1]["done"] is True
    assert list(lines(follow(pair.b, r.headers["Chatsvc-Stream"]))) == chunks
    body = {"model": "llama3.2", "prompt": "hi", "stream": True}
    r = start(pair.b, "/v1/completions", body)
    assert [e for e in sse_events(r) if "data" in e][-1]["data"] == "[DONE]"


def test_without_resumable_nothing_is_recorded(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=30, interval=0.05)
    client = pair.store.client()
    before = set(client.scan_iter("chatsvc:rs:*"))
    r = requests.post(
        f"{pair.a.url}/api/chat", json=CHAT, headers=auth(), stream=True, timeout=10
    )
    assert "Chatsvc-Stream" not in r.headers
    next(r.iter_lines())
    closed_at = time.monotonic()
    r.close()  # hang-up still means cancel
    hangup = sim.wait_hangup(5)
    assert hangup is not None and hangup.at - closed_at < 0.5
    assert set(client.scan_iter("chatsvc:rs:*")) == before


def test_resumable_refused_where_it_does_not_apply(pair: Pair) -> None:
    r = requests.post(
        f"{pair.a.url}/api/pull?resumable=1",
        json={"model": "x"},
        headers=auth(),
        timeout=5,
    )
    assert r.status_code in (400, 403)
    assert list(r.json()) == ["error"]


# -- replay and follow -------------------------------------------------------------


def test_replay_after_n_on_the_other_instance_then_follow(
    pair: Pair, sim: Simulator
) -> None:
    paced(sim, chunks=40, interval=0.05)
    r = start(pair.a)
    location = r.headers["Chatsvc-Stream"]
    it = lines(r)
    head = [next(it) for _ in range(5)]
    r.close()  # the original client leaves mid-answer: generation goes on
    rest = list(lines(follow(pair.b, location + "?after=5")))
    assert rest[-1]["done"] is True
    whole = list(lines(follow(pair.b, location, key=KEYS[0])))
    assert head + rest == whole  # no gap, no duplicate
    assert len(whole) == 41
    assert sim.hangups == []  # nobody cancelled Ollama
    # Last-Event-ID, as EventSource sends it, in SSE on instance A.
    sse = follow(pair.a, location, fmt="sse", **{"Last-Event-ID": "38"})
    events = [e for e in sse_events(sse) if "data" in e]
    assert [e["id"] for e in events] == ["39", "40", "41"]
    assert [json.loads(e["data"]) for e in events] == whole[38:]
    # Text: only the text after chunk 20.
    text = follow(pair.b, location + "?after=20", fmt="text").text
    assert text == text_of(whole[20:]) + "\n"


def test_several_readers_follow_live(pair: Pair, sim: Simulator) -> None:
    duration = paced(sim, chunks=30, interval=0.05)
    r = start(pair.a)
    location = r.headers["Chatsvc-Stream"]
    results: dict[str, list[dict[str, Any]]] = {}

    def read(name: str, gw: Gateway) -> None:
        results[name] = list(lines(follow(gw, location)))

    readers = [
        threading.Thread(target=read, args=(name, gw))
        for name, gw in (("a", pair.a), ("b", pair.b), ("b2", pair.b))
    ]
    for t in readers:
        t.start()
    original = list(lines(r))
    started = time.monotonic()
    for t in readers:
        t.join(10)
    assert time.monotonic() - started < duration  # they followed live
    assert results["a"] == results["b"] == results["b2"] == original


def test_heartbeats_while_the_upstream_is_silent(pair: Pair, sim: Simulator) -> None:
    sim.settings.first_token_delay = 3.5  # > one heartbeat: the 200 comes first
    sim.settings.chunks = 2
    r = start(pair.a, fmt="sse")
    location = r.headers["Chatsvc-Stream"]
    reader = follow(pair.b, location, fmt="sse")
    events = list(sse_events(reader))
    assert {"comment": "ping"} in events  # CHATSVC_HEARTBEAT_S is 1 s
    assert events[-1]["event"] == "done"
    r.close()


# -- grace period, abandonment, expiry ----------------------------------------------


def test_reader_back_within_grace_gets_everything(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=30, interval=0.1)
    r = start(pair.a)
    first = next(lines(r))
    r.close()
    time.sleep(GRACE_S / 2)
    rest = list(lines(follow(pair.b, r.headers["Chatsvc-Stream"] + "?after=1")))
    assert len(rest) == 30 and rest[-1]["done"] is True
    assert first["done"] is False
    assert sim.hangups == []


def test_no_reader_past_grace_stops_ollama(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=200, interval=0.05)
    abandoned = streams_total(pair.a, "abandoned") + streams_total(pair.b, "abandoned")
    r = start(pair.a)
    location = r.headers["Chatsvc-Stream"]
    next(lines(r))
    left_at = time.monotonic()
    r.close()
    hangup = sim.wait_hangup(GRACE_S + 5)
    assert hangup is not None
    late = hangup.at - (left_at + GRACE_S)
    print(f"grace end -> Ollama's hang-up: {late * 1000:.0f} ms")
    # The reader's departure is seen at its next write (one chunk interval), and
    # the recorder checks its keys with every batch.
    assert 0 <= late < 0.5
    assert hangup.chunks_sent < 200
    # Late readers get what there was, then the reason it ended.
    events = list(sse_events(follow(pair.b, location, fmt="sse")))
    assert events[-1]["event"] == "error"
    assert "CHATSVC_RESUME_GRACE_S" in json.loads(events[-1]["data"])["error"]
    wait_until(
        lambda: (
            streams_total(pair.a, "abandoned") + streams_total(pair.b, "abandoned")
            == abandoned + 1
        ),
        "the abandoned stream to be counted",
    )


def test_finished_stream_expires_after_ttl(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=3, interval=0.01)
    r = start(pair.a)
    whole = list(lines(r))
    location = r.headers["Chatsvc-Stream"]
    assert list(lines(follow(pair.b, location))) == whole
    time.sleep(TTL_S + 0.5)
    gone = follow(pair.b, location)
    assert gone.status_code == 404
    assert "expired" in gone.json()["error"]
    unknown = follow(pair.b, "/api/streams/" + "A" * 32)
    assert unknown.status_code == 404
    assert "no resumable stream" in unknown.json()["error"]
    assert len(sim.requests) == 1  # never regenerated


def test_reader_hears_when_the_generating_process_died(
    pair: Pair, sim: Simulator
) -> None:
    paced(sim, chunks=100, interval=0.1)
    r = start(pair.a)
    location = r.headers["Chatsvc-Stream"]
    next(lines(r))
    for pid in children(pair.a.proc.pid):  # its workers, SIGKILLed mid-answer
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    events = list(sse_events(follow(pair.b, location, fmt="sse")))
    assert events[-1]["event"] == "error"
    assert "stopped before its end" in json.loads(events[-1]["data"])["error"]
    assert time.monotonic() - killed_at < 5  # the live key lasts 3 s
    wait_until(lambda: answers(pair.a), "instance a's new workers")


# -- DELETE and ownership --------------------------------------------------------------


def test_delete_on_the_other_instance_stops_at_once(pair: Pair, sim: Simulator) -> None:
    interval = 0.2
    paced(sim, chunks=100, interval=interval)
    r = start(pair.a, fmt="sse")
    location = r.headers["Chatsvc-Stream"]
    other = follow(pair.b, location, fmt="sse")
    events = sse_events(r)
    next(e for e in events if "data" in e)
    sent_at = time.monotonic()
    deleted = requests.delete(pair.b.url + location, headers=auth(), timeout=5)
    assert deleted.status_code == 204 and deleted.content == b""
    hangup = sim.wait_hangup(5)
    assert hangup is not None
    print(f"DELETE -> Ollama's hang-up: {(hangup.at - sent_at) * 1000:.0f} ms")
    assert hangup.at - sent_at < interval
    for reader in (list(events), list(sse_events(other))):
        assert reader[-1]["event"] == "error"
        assert "stopped" in json.loads(reader[-1]["data"])["error"]


def test_only_the_starting_key_may_read_or_stop(pair: Pair, sim: Simulator) -> None:
    paced(sim, chunks=20, interval=0.05)
    r = start(pair.a, key=KEYS[0])
    location = r.headers["Chatsvc-Stream"]
    it = lines(r)
    next(it)
    for gw in (pair.a, pair.b):
        theirs = follow(gw, location, key=KEYS[1])
        assert theirs.status_code == 404  # the same answer as for no such stream
        assert theirs.json() == {
            "error": f"there is no resumable stream {location[13:]}"
        }
        gone = requests.delete(gw.url + location, headers=auth(KEYS[1]), timeout=5)
        assert gone.status_code == 404
        assert follow(gw, location, key=None).status_code == 401
    assert list(it)[-1]["done"] is True  # still running for its owner
    assert sim.hangups == []


def test_without_keys_the_id_is_the_permission(
    gateway: Gateway, sim: Simulator
) -> None:
    paced(sim, chunks=5, interval=0.01)
    r = start(gateway, key=None)
    whole = list(lines(r))
    again = follow(gateway, r.headers["Chatsvc-Stream"], key=None)
    assert list(lines(again)) == whole
    bad = requests.get(gateway.url + "/api/streams/x?after=z", timeout=5)
    assert bad.status_code == 400


# -- a native EventSource across a cut connection --------------------------------------


class CuttingProxy:
    """A TCP proxy to the gateway whose open connections the test can cut."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> int:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(conns)

    def close(self) -> None:
        self.listener.close()
        self.cut()


EVENT_SOURCE_PAGE = """
window.got = []; window.opens = 0; window.finished = false;
const es = new EventSource(URL);
es.onopen = () => { window.opens += 1; };
es.onmessage = (e) => { window.got.push([e.lastEventId, JSON.parse(e.data)]); };
es.addEventListener("done", (e) => {
  window.got.push([e.lastEventId, JSON.parse(e.data)]);
  window.finished = true; es.close();
});
"""


def test_native_eventsource_survives_a_cut_connection(
    gateway: Gateway, sim: Simulator
) -> None:
    from playwright.sync_api import sync_playwright

    chunks = 150  # 15 s: the browser starts well before the end
    paced(sim, chunks=chunks, interval=0.1)
    r = start(gateway, key=None)
    location = r.headers["Chatsvc-Stream"]
    r.close()
    proxy = CuttingProxy(gateway.url)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page()
            base = f"http://127.0.0.1:{proxy.port}"
            page.goto(base + "/healthz")
            page.evaluate(
                EVENT_SOURCE_PAGE.replace("URL", json.dumps(location + "?format=sse"))
            )
            page.wait_for_function("window.got.length >= 8", timeout=10_000)
            assert proxy.cut() >= 2
            assert not page.evaluate("window.finished")
            # EventSource waits retry: 3000 ms, then resumes with Last-Event-ID.
            page.wait_for_function("window.finished", timeout=30_000)
            got = page.evaluate("window.got")
            opens = page.evaluate("window.opens")
            browser.close()
    finally:
        proxy.close()
    assert opens >= 2  # it did reconnect
    assert [int(n) for n, _ in got] == list(range(1, chunks + 2))
    whole = list(lines(follow(gateway, location, key=None)))
    assert [chunk for _, chunk in got] == whole
