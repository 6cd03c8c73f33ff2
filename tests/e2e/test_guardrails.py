"""Guard-rails under real gunicorn: auth, allowlist, limits, CORS, metrics, logs."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from chatsvc.simulator import Simulator
from tests.e2e.conftest import metrics_dirs

pytestmark = pytest.mark.e2e

PROMPT = "hi"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}]}
GENERATE = {"model": "llama3.2", "prompt": PROMPT}
ONE_MIB = 1048576  # CHATSVC_MAX_BODY_BYTES's default


# -- helpers ---------------------------------------------------------------------


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> requests.Response:
    """One request on a connection of its own (so they spread over workers)."""
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    with requests.Session() as session:
        return session.request(
            method, url + path, json=body, headers=headers, timeout=timeout
        )


def assert_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    return str(body["error"])


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def open_stream(
    stack: ExitStack,
    url: str,
    body: Any = CHAT,
    path: str = "/api/chat",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    wait: bool = True,
) -> http.client.HTTPResponse | None:
    """Send a streamed request on its own connection, closed when stack closes.

    With wait, return the response once its headers are in; without, return None
    as soon as the request is sent (the client may then leave before any answer).
    """
    conn = http.client.HTTPConnection(
        *address(url), timeout=15, source_address=(source, 0)
    )
    stack.callback(conn.close)
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return conn.getresponse() if wait else None


def records(log_text: str) -> list[dict[str, Any]]:
    """chatsvc's JSON log lines among gunicorn's own."""
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]


def wait_for_records(
    gw: Any, count: int, route: str = "/api/chat", timeout: float = 10
) -> list[dict[str, Any]]:
    """Wait until count requests to route have logged their end, which chatsvc does
    after releasing the request's stream slot and updating the metrics."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [r for r in records(gw.log_text()) if r.get("route") == route]
        except json.JSONDecodeError:  # a line caught half-written
            found = []
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} ended:\n{found}"
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, key: str | None = None) -> Samples:
    response = call(url, "GET", "/metrics", key=key)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of name's samples that carry these labels (all workers are summed)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines()]


# -- auth ------------------------------------------------------------------------

KEYS = ("k1-7f3a9c", "k2-51de0b")

PROTECTED = [
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("POST", "/api/show", {"model": "llama3.2"}),
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/generate", GENERATE),
    ("POST", "/api/chat", {**CHAT, "stream": False}),
    ("GET", "/api/no-such-route", None),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_api_and_metrics_need_a_valid_bearer_key(
    start_gateway: Callable[..., Any],
    sim: Simulator,
    method: str,
    path: str,
    body: Any,
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS=",".join(KEYS), WEB_CONCURRENCY="1")
    for authorization in (
        None,
        "Bearer",
        "Bearer wrong-key",
        f"Basic {KEYS[0]}",
        f"Bearer {KEYS[0]}x",
        f"{KEYS[0]}",
    ):
        headers = {"Authorization": authorization} if authorization else {}
        response = call(gw.url, method, path, body, headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for key in KEYS:
        response = call(gw.url, method, path, body, key=key)
        if path == "/api/no-such-route":
            assert_error(response, 404)
        else:
            assert response.status_code == 200, response.text
    # The keys are chatsvc's: Ollama never sees them.
    assert all("authorization" not in r.headers for r in sim.requests)


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/static/style.css"])
def test_page_health_and_static_stay_open(
    start_gateway: Callable[..., Any], sim: Simulator, path: str
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS=",".join(KEYS), WEB_CONCURRENCY="1")
    assert call(gw.url, "GET", path).status_code == 200


@pytest.mark.parametrize("path", ["//api/tags", "/api//tags", "//metrics"])
def test_doubled_slashes_do_not_skip_the_key(
    start_gateway: Callable[..., Any], sim: Simulator, path: str
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS=",".join(KEYS), WEB_CONCURRENCY="1")
    host, port = address(gw.url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)  # raw, so no client tidies the path
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status != 200
    assert b"models" not in data and b"chatsvc_" not in data


# -- model allowlist ---------------------------------------------------------------

ALLOWLIST = {"CHATSVC_MODELS": "llama3.2", "CHATSVC_DEFAULT_MODEL": "llama3.2"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {**CHAT, "model": "qwen3"}),
        ("/api/chat", {**CHAT, "model": "qwen3", "stream": False}),
        ("/api/generate", {**GENERATE, "model": "qwen3:latest"}),
        ("/api/show", {"model": "qwen3"}),
        ("/api/show", {"name": "qwen3"}),
    ],
)
def test_models_outside_the_allowlist_get_403(
    start_gateway: Callable[..., Any], sim: Simulator, path: str, body: Any
) -> None:
    gw = start_gateway(**ALLOWLIST, WEB_CONCURRENCY="1")
    assert "llama3.2" in assert_error(call(gw.url, "POST", path, body), 403)
    assert sim.requests == []  # refused before reaching Ollama


@pytest.mark.parametrize("model", ["llama3.2", "llama3.2:latest", None])
def test_allowed_and_default_model_get_through(
    start_gateway: Callable[..., Any], sim: Simulator, model: str | None
) -> None:
    gw = start_gateway(**ALLOWLIST, WEB_CONCURRENCY="1")
    body = {k: v for k, v in CHAT.items() if k != "model"}
    if model is not None:
        body["model"] = model
    response = call(gw.url, "POST", "/api/chat", body)
    assert response.status_code == 200, response.text
    assert ndjson(response.content)[-1]["done"] is True
    assert [r.body["model"] for r in sim.requests] == [model or "llama3.2"]


def test_tags_and_ps_list_only_allowed_models(
    start_gateway: Callable[..., Any], sim: Simulator
) -> None:
    gw = start_gateway(**ALLOWLIST, WEB_CONCURRENCY="1")
    # Load both models in the simulator, one through chatsvc, one behind its back.
    assert call(gw.url, "POST", "/api/chat", CHAT).status_code == 200
    assert requests.post(
        f"{sim.url}/api/generate", json={"model": "qwen3"}, timeout=10
    ).ok
    assert {
        m["name"]
        for m in requests.get(f"{sim.url}/api/ps", timeout=10).json()["models"]
    } == {"llama3.2:latest", "qwen3:latest"}
    for path in ("/api/tags", "/api/ps"):
        response = call(gw.url, "GET", path)
        assert response.status_code == 200
        assert [m["name"] for m in response.json()["models"]] == ["llama3.2:latest"]


# -- limits ----------------------------------------------------------------------

POST_ROUTES = [
    ("/api/chat", CHAT),
    ("/api/generate", GENERATE),
    ("/api/show", {"model": "llama3.2"}),
]


@pytest.mark.parametrize(("path", "body"), POST_ROUTES)
@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_gets_413(
    gateway: Any, sim: Simulator, path: str, body: Any, chunked: bool
) -> None:
    data = json.dumps({**body, "pad": "x" * ONE_MIB}).encode()
    payload: Any = (
        iter([data[i : i + 65536] for i in range(0, len(data), 65536)])
        if chunked
        else data
    )
    with requests.Session() as session:
        response = session.post(
            gateway.url + path,
            data=payload,
            timeout=15,
            headers={"Content-Type": "application/json"},
        )
    assert_error(response, 413)
    assert sim.requests == []


@pytest.mark.parametrize(("path", "body"), POST_ROUTES)
def test_huge_content_length_is_refused_before_the_body_is_read(
    gateway: Any, path: str, body: Any
) -> None:
    conn = http.client.HTTPConnection(*address(gateway.url), timeout=5)
    try:
        # Announce a gigabyte, send ten bytes: an answer can only come from the
        # Content-Length (the socket timeout fails a server that waits for more).
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(1000 * ONE_MIB))
        sent = time.monotonic()
        conn.endheaders(json.dumps(body).encode()[:10])
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert time.monotonic() - sent < 2
    assert response.status == 413
    assert list(json.loads(data)) == ["error"]


@pytest.mark.parametrize(("path", "body"), POST_ROUTES)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"],
)
def test_non_json_body_gets_415(
    gateway: Any, sim: Simulator, path: str, body: Any, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with requests.Session() as session:
        response = session.post(
            gateway.url + path, data=json.dumps(body), headers=headers, timeout=15
        )
    assert "Content-Type: application/json" in assert_error(response, 415)
    assert sim.requests == []


def test_stream_slots_are_released_however_streams_end(
    start_gateway: Callable[..., Any], sim: Simulator
) -> None:
    limit = 4
    # Two workers share the limit through the store.
    gw = start_gateway(
        WEB_CONCURRENCY="2", CHATSVC_MAX_STREAMS=str(limit), CHATSVC_HEARTBEAT_S="0.5"
    )

    def hung_up_on_ollama() -> None:
        for _ in range(limit):
            assert sim.wait_hangup(5) is not None

    ended = 0

    def full_house_gets_503() -> None:
        response = call(gw.url, "POST", "/api/chat", CHAT)
        assert_error(response, 503)
        assert int(response.headers["Retry-After"]) > 0

    # 1. Clients leaving during the upstream's first-token silence, before
    # any answer (the status is not committed yet).
    sim.settings.first_token_delay = 60
    with ExitStack() as stack:
        for _ in range(limit):
            open_stream(stack, gw.url, wait=False)
        wait_until(lambda: len(sim.requests) == limit, "the streams to reach Ollama")
        full_house_gets_503()
    ended += limit + 1
    wait_for_records(gw, ended)
    hung_up_on_ollama()

    # 2. Leaving during the silence after the 200 (heartbeats only so far).
    with ExitStack() as stack:
        for _ in range(limit):
            response = open_stream(stack, gw.url)
            assert response is not None and response.status == 200
            assert json.loads(response.readline())["message"]["content"] == ""
        full_house_gets_503()
    ended += limit + 1
    wait_for_records(gw, ended)
    hung_up_on_ollama()

    # 3. Leaving mid-stream, after real chunks.
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.1
    sim.settings.chunks = 100
    with ExitStack() as stack:
        for _ in range(limit):
            response = open_stream(stack, gw.url)
            assert response is not None and response.status == 200
            assert json.loads(response.readline())["message"]["content"]
        full_house_gets_503()
    ended += limit + 1
    wait_for_records(gw, ended)
    hung_up_on_ollama()

    # 4. Streams that fail, before or after their first byte.
    sim.settings.interval = 0.01
    sim.settings.chunks = None
    for fault, model in [
        ("error_before", "llama3.2"),
        ("error_first_line", "llama3.2"),
        ("error_after", "llama3.2"),
        ("drop_after", "llama3.2"),
        ("cut_before_done", "llama3.2"),
        (None, "no-such-model"),
    ]:
        sim.settings.fault = fault
        with ExitStack() as stack:
            responses = [
                open_stream(stack, gw.url, {**CHAT, "model": model})
                for _ in range(limit)
            ]
            for response in responses:
                assert response is not None
                body = response.read()
                last = json.loads(body.splitlines()[-1])
                assert "error" in last, (fault, response.status, body)
        ended += limit
        wait_for_records(gw, ended)

    # 5. After all that, a full set is admitted again, and not one more.
    sim.settings.fault = None
    sim.settings.chunks = 100
    with ExitStack() as stack:
        for _ in range(limit):
            response = open_stream(stack, gw.url)
            assert response is not None and response.status == 200
            assert json.loads(response.readline())["done"] is False
        full_house_gets_503()


@pytest.mark.parametrize("by", ["key", "address"])
def test_per_client_stream_limit_gets_429(
    start_gateway: Callable[..., Any], sim: Simulator, by: str
) -> None:
    per_client = 2
    env = {"WEB_CONCURRENCY": "1", "CHATSVC_MAX_STREAMS_PER_CLIENT": str(per_client)}
    if by == "key":
        env["CHATSVC_API_KEYS"] = ",".join(KEYS)
        me: dict[str, Any] = {"headers": {"Authorization": f"Bearer {KEYS[0]}"}}
        other: dict[str, Any] = {"headers": {"Authorization": f"Bearer {KEYS[1]}"}}
    else:  # without keys a client is its address; all of 127/8 is this machine
        me, other = {"source": "127.0.0.1"}, {"source": "127.0.0.2"}
    gw = start_gateway(**env)
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.1
    sim.settings.chunks = 100
    with ExitStack() as stack:
        for _ in range(per_client):
            response = open_stream(stack, gw.url, **me)
            assert response is not None and response.status == 200
            response.readline()
        refused = open_stream(stack, gw.url, **me)
        assert refused is not None and refused.status == 429
        assert int(refused.getheader("Retry-After") or 0) > 0
        assert list(json.loads(refused.read())) == ["error"]
        response = open_stream(stack, gw.url, **other)
        assert response is not None and response.status == 200


def test_a_client_may_start_its_next_stream_on_reading_the_last_line(
    start_gateway: Callable[..., Any], sim: Simulator
) -> None:
    # The slot is given back before the last line goes out, not after the
    # response ends: a client that sends its next request as soon as it reads
    # "done" is within a limit of one, whichever worker takes that request.
    gw = start_gateway(CHATSVC_MAX_STREAMS_PER_CLIENT="1")
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0
    sim.settings.chunks = 2
    with ExitStack() as stack:
        for _ in range(50):  # each stream starts on its predecessor's last line
            response = open_stream(stack, gw.url)
            assert response is not None and response.status == 200, response.read()
            while not json.loads(response.readline())["done"]:
                pass


# -- CORS ------------------------------------------------------------------------

APP = "https://app.example"


@pytest.mark.parametrize(
    ("configured", "origin", "allowed"),
    [
        (APP, APP, APP),
        (f"https://b.example,{APP}", APP, APP),
        (APP, "https://evil.example", None),
        (APP, "https://app.example.evil.example", None),
        ("*", "https://any.example", "*"),
        (None, APP, None),
    ],
)
def test_cors_follows_the_allowlist(
    start_gateway: Callable[..., Any],
    sim: Simulator,
    configured: str | None,
    origin: str,
    allowed: str | None,
) -> None:
    env = {"CHATSVC_API_KEYS": KEYS[0], "WEB_CONCURRENCY": "1"}
    if configured is not None:
        env["CHATSVC_CORS_ORIGINS"] = configured
    gw = start_gateway(**env)

    # The preflight needs no key, whatever the configuration.
    preflight = call(
        gw.url,
        "OPTIONS",
        "/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers.get("Access-Control-Allow-Origin") == allowed
    if allowed:
        allow_headers = preflight.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type"} <= set(
            re.split(r"\s*,\s*", allow_headers)
        )
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]

    # The real requests: answered with or without the header, never credentials.
    for response in (
        call(
            gw.url, "POST", "/api/chat", CHAT, key=KEYS[0], headers={"Origin": origin}
        ),
        call(gw.url, "GET", "/api/tags", headers={"Origin": origin}),  # a 401
    ):
        assert response.headers.get("Access-Control-Allow-Origin") == allowed
        assert "Access-Control-Allow-Credentials" not in response.headers
        # Listed origins make every answer depend on Origin; "*" or no CORS do not.
        if configured not in (None, "*"):
            assert "Origin" in response.headers.get("Vary", "")


# -- metrics ---------------------------------------------------------------------


def worker_pids(metrics_dir: Path) -> set[str]:
    """Workers that have written counters (prometheus_client names files by pid)."""
    return {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}


def test_metrics_add_up_across_both_workers(
    start_gateway: Callable[..., Any], sim: Simulator
) -> None:
    # Two workers (the fixture's default); heartbeats out of the way so every line
    # a client reads is an upstream chunk; a 1 s upstream timeout to hit; room for
    # all the parallel streams of this one client.
    gw = start_gateway(
        CHATSVC_HEARTBEAT_S="5",
        CHATSVC_UPSTREAM_TIMEOUT_S="1",
        CHATSVC_MAX_STREAMS_PER_CLIENT="64",
    )
    (folder,) = metrics_dirs(gw.proc.pid)
    metrics_dir = Path(folder)
    fresh = scrape(gw.url)
    for outcome in ("completed", "cancelled", "upstream_error", "timeout", "shutdown"):
        assert value(fresh, "chatsvc_streams_total", outcome=outcome) == 0
    assert value(fresh, "chatsvc_streams_open") == 0
    sim.settings.first_token_delay = 0
    sim.settings.interval = 0.02
    sim.settings.chunks = 6

    # 1. Completed streams, many at once on connections of their own, until
    # both workers have served some.
    routes = {"/api/chat": CHAT, "/api/generate": GENERATE}
    sent = {path: 0 for path in routes}
    lines = {path: 0 for path in routes}

    def stream(path: str) -> int:
        response = call(gw.url, "POST", path, routes[path])
        assert response.status_code == 200
        parts = ndjson(response.content)
        assert parts[-1]["done"] is True
        return len(parts)

    with ThreadPoolExecutor(16) as pool:
        for _ in range(10):
            batch = [path for path in routes for _ in range(12)]
            for path, count in zip(batch, pool.map(stream, batch), strict=True):
                sent[path] += 1
                lines[path] += count
            if len(worker_pids(metrics_dir)) == 2:
                break
    assert len(worker_pids(metrics_dir)) == 2, "one worker served every request"

    samples = scrape(gw.url)
    completed = sum(sent.values())
    assert value(samples, "chatsvc_streams_total", outcome="completed") == completed
    assert value(samples, "chatsvc_streams_open") == 0
    for path in routes:
        assert (
            value(samples, "chatsvc_requests_total", route=path, status="200")
            == sent[path]
        )
        assert value(samples, "chatsvc_chunks_total", route=path) == lines[path]
        assert (
            value(samples, "chatsvc_time_to_first_token_seconds_count", route=path)
            == sent[path]
        )
        assert (
            value(
                samples,
                "chatsvc_time_to_first_token_seconds_bucket",
                route=path,
                le="+Inf",
            )
            == sent[path]
        )

    # 2. Streams that end otherwise, and errors before the first byte.
    sim.settings.chunks = 100
    sim.settings.interval = 0.1
    with ExitStack() as stack:  # cancelled mid-stream
        for _ in range(3):
            response = open_stream(stack, gw.url)
            assert response is not None and response.status == 200
            response.readline()
    wait_for_records(gw, sent["/api/chat"] + 3)

    sim.settings.chunks = None
    sim.settings.interval = 0.01
    for fault, count in [("error_after", 2), ("drop_after", 1)]:  # in-band
        sim.settings.fault = fault
        for _ in range(count):
            response = call(gw.url, "POST", "/api/chat", CHAT)
            assert response.status_code == 200
            assert "error" in ndjson(response.content)[-1]
    sim.settings.fault = "error_before"  # Ollama's 500, before any byte: kept
    for _ in range(2):
        assert_error(call(gw.url, "POST", "/api/chat", CHAT), 500)
    sim.settings.fault = None
    assert_error(call(gw.url, "POST", "/api/chat", {**CHAT, "model": "nope"}), 404)

    sim.settings.chunks = 3  # the upstream stalls 2 s after its first chunk
    sim.settings.interval = 2
    response = call(gw.url, "POST", "/api/chat", CHAT)
    assert response.status_code == 200
    assert "CHATSVC_UPSTREAM_TIMEOUT_S" in ndjson(response.content)[-1]["error"]
    sim.settings.first_token_delay = 2  # and silent from the start: a 504
    assert_error(call(gw.url, "POST", "/api/chat", CHAT), 504)

    wait_for_records(gw, sent["/api/chat"] + 3 + 2 + 1 + 2 + 1 + 1 + 1)
    # Every scrape sums all workers, whichever worker answers it.
    scrapes = [scrape(gw.url) for _ in range(4)]
    for samples in scrapes:
        for outcome, count in [
            ("completed", completed),
            ("cancelled", 3),
            ("upstream_error", 3),
            ("timeout", 1),
        ]:
            assert value(samples, "chatsvc_streams_total", outcome=outcome) == count
        assert value(samples, "chatsvc_streams_total") == completed + 7
        assert value(samples, "chatsvc_streams_open") == 0
        for status, count in [
            ("200", sent["/api/chat"] + 3 + 3 + 1),
            ("500", 2),
            ("404", 1),
            ("504", 1),
        ]:
            assert (
                value(
                    samples, "chatsvc_requests_total", route="/api/chat", status=status
                )
                == count
            )
        for kind, count in [
            ("in_band", 2),
            ("protocol", 1),
            ("status_500", 2),
            ("status_404", 1),
            ("timeout", 2),
        ]:
            assert value(samples, "chatsvc_upstream_errors_total", kind=kind) == count
        assert (
            value(
                samples, "chatsvc_time_to_first_token_seconds_count", route="/api/chat"
            )
            == sent["/api/chat"] + 3 + 3 + 1
        )


# -- logs ------------------------------------------------------------------------


def test_one_json_log_line_per_request_without_secrets_or_text(
    start_gateway: Callable[..., Any], sim: Simulator
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS=",".join(KEYS))
    sim.settings.first_token_delay = 0
    secret_prompt = "[echo] XyzzyPlughQuux"  # the simulator echoes it back
    chat = {**CHAT, "messages": [{"role": "user", "content": secret_prompt}]}
    sent: dict[str, tuple[int, str | None]] = {}  # request id -> status, outcome

    response = call(
        gw.url,
        "POST",
        "/api/chat",
        chat,
        key=KEYS[0],
        headers={"X-Request-ID": "req-stream-1"},
    )
    assert response.headers["X-Request-ID"] == "req-stream-1"
    chunks = len(ndjson(response.content))
    sent["req-stream-1"] = (200, "completed")

    response = call(
        gw.url,
        "POST",
        "/api/generate",
        GENERATE,
        key=KEYS[1],
        headers={"X-Request-ID": "req-generate-2", "Accept": "text/plain"},
    )
    reply = response.text.strip()
    assert len(reply) > 20
    sent["req-generate-2"] = (200, "completed")

    response = call(
        gw.url,
        "POST",
        "/api/chat",
        {**chat, "stream": False},
        key=KEYS[0],
        headers={"X-Request-ID": "req-whole-3"},
    )
    assert response.status_code == 200
    sent["req-whole-3"] = (200, None)

    response = call(
        gw.url,
        "POST",
        "/api/chat",
        chat,
        key="wrong-key-5c1e",
        headers={"X-Request-ID": "req-wrong-key-4"},
    )
    assert_error(response, 401)
    sent["req-wrong-key-4"] = (401, None)

    # No id, or one that could forge log content: chatsvc makes its own.
    for incoming in (None, "bad id\twith spaces", "x" * 200):
        headers = {"X-Request-ID": incoming} if incoming else {}
        response = call(gw.url, "GET", "/api/version", key=KEYS[0], headers=headers)
        request_id = response.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        sent[request_id] = (200, None)

    text = gw.log_text()
    logged = {r["request_id"]: r for r in records(text) if r["request_id"] in sent}
    assert sorted(logged) == sorted(sent)
    assert sum(r["request_id"] in sent for r in records(text)) == len(sent)
    for request_id, (status, outcome) in sent.items():
        record = logged[request_id]
        assert record["status"] == status
        assert isinstance(record["route"], str) and record["duration_ms"] >= 0
        if outcome:
            assert record["outcome"] == outcome
            assert record["model"] == "llama3.2"
            assert record["ttfb_ms"] > 0 and record["chunks"] > 0
            assert record["duration_ms"] >= record["ttfb_ms"]
    assert logged["req-stream-1"]["chunks"] == chunks
    assert logged["req-stream-1"]["route"] == "/api/chat"
    assert logged["req-wrong-key-4"]["route"] == "/api/chat"

    for secret in (*KEYS, "wrong-key-5c1e", "Xyzzy", "Plugh", "Quux", reply[:20]):
        assert secret not in text
