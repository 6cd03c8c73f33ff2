"""The views through Flask's test client, against the real simulator."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder

from chatsvc import relay
from chatsvc.simulator import Simulator

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
GENERATE = {"model": "llama3.2", "prompt": "hi"}


def lines(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"data": "{}", "content_type": "text/plain"},
            415,
            "Content-Type: application/json",
        ),
        ({"data": "hello"}, 415, "Content-Type: application/json"),
        (
            {"data": "not json", "content_type": "application/json"},
            400,
            "not valid JSON",
        ),
        ({"json": [CHAT]}, 400, "must be a JSON object, not a list"),
        ({"json": {**CHAT, "messages": "hi"}}, 400, "messages must be a list"),
        (
            {"json": {**CHAT, "messages": [{"content": "hi"}]}},
            400,
            "messages[0].role is required",
        ),
        ({"json": {**CHAT, "stream": "yes"}}, 400, "stream must be true or false"),
        ({"json": {"messages": CHAT["messages"]}}, 400, "model is required"),
        (
            {
                "json": {
                    **CHAT,
                    "messages": [{"role": "user", "images": ["/etc/passwd"]}],
                }
            },
            400,
            "messages[0].images[0] must be base64",
        ),
        ({"json": {**CHAT, "model": "nope"}}, 404, "model 'nope' not found"),
        (
            {"json": CHAT, "query_string": {"format": "xml"}},
            400,
            "format must be one of",
        ),
    ],
)
def test_bad_chat_requests(
    client: FlaskClient, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = client.post("/api/chat", **kwargs)
    assert response.status_code == status
    assert response.content_type == "application/json; charset=utf-8"
    assert message in response.get_json()["error"]


def test_oversized_body_is_413(make_app: Any) -> None:
    client = make_app(CHATSVC_MAX_BODY_BYTES=100).test_client()
    response = client.post("/api/chat", json={**CHAT, "pad": "x" * 200})
    assert response.status_code == 413
    assert "CHATSVC_MAX_BODY_BYTES" in response.get_json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/api/chat", 405),
        ("DELETE", "/api/tags", 405),
        ("PUT", "/api/generate", 405),
    ],
)
def test_unknown_route_and_wrong_method(
    client: FlaskClient, method: str, path: str, status: int
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert set(response.get_json()) == {"error"}
    if status == 405:
        assert "POST" in response.headers["Allow"] or "GET" in response.headers["Allow"]


def test_chat_streams_ndjson(client: FlaskClient, sim: Simulator) -> None:
    sim.settings.chunks = 5
    response = client.post("/api/chat", json=CHAT)
    assert response.status_code == 200
    assert response.content_type == "application/x-ndjson"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Length" not in response.headers
    parts = lines(response.data)
    assert [p["done"] for p in parts] == [False] * 5 + [True]
    assert all(p["message"]["role"] == "assistant" for p in parts)
    assert parts[-1]["done_reason"] == "stop" and parts[-1]["eval_count"] == 5


def test_generate_stream_false_is_one_object(
    client: FlaskClient, sim: Simulator
) -> None:
    sim.settings.chunks = 4
    response = client.post("/api/generate", json={**GENERATE, "stream": False})
    assert response.status_code == 200
    assert response.content_type == "application/json; charset=utf-8"
    body = response.get_json()
    assert body["done"] is True and body["response"] and "context" in body


def test_accept_json_still_streams(client: FlaskClient) -> None:
    # The official clients send Accept: application/json even when streaming.
    response = client.post(
        "/api/chat", json=CHAT, headers={"Accept": "application/json"}
    )
    assert response.content_type == "application/x-ndjson"
    assert len(lines(response.data)) > 1


def test_sse_format(client: FlaskClient, sim: Simulator) -> None:
    sim.settings.chunks = 2
    response = client.post(
        "/api/chat", json=CHAT, headers={"Accept": "text/event-stream"}
    )
    assert response.content_type == "text/event-stream"
    events = response.data.decode().split("\n\n")
    assert events[0] == "retry: 3000"
    assert events[1].startswith("id: 1\ndata: {")
    assert events[2].startswith("id: 2\ndata: {")
    assert events[3].startswith("id: 3\nevent: done\ndata: {")
    assert json.loads(events[3].split("data: ", 1)[1])["done"] is True
    assert events[4:] == [""]


def test_text_format(client: FlaskClient, sim: Simulator) -> None:
    response = client.post(
        "/api/generate?format=text", json={**GENERATE, "prompt": "[echo] a <b> & c"}
    )
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.data == b"[echo] a <b> & c\n"


def test_raw_u0085_from_ollama_survives_byte_for_byte(client: FlaskClient) -> None:
    text = "[echo] one\x85two\u2028three\u2029four \u00e9\U0001f600"
    response = client.post(
        "/api/chat", json={**CHAT, "messages": [{"role": "user", "content": text}]}
    )
    assert b"\xc2\x85" not in response.data and b"\\u0085" in response.data
    parts = lines(response.data)
    assert "".join(p["message"]["content"] for p in parts) == text
    # Exactly one JSON object per line, however a client splits lines.
    assert len(response.data.decode().splitlines()) == len(parts)


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/api/chat", {**CHAT, "messages": []}, "load"),
        ("/api/generate", {"model": "llama3.2", "prompt": ""}, "load"),
        ("/api/generate", {"model": "llama3.2", "keep_alive": 0}, "unload"),
    ],
)
def test_load_reply_is_one_json_object(
    client: FlaskClient, path: str, body: dict[str, Any], reason: str
) -> None:
    # As Ollama answers it, even to a streamed request (ollama-wire.md §1.5).
    response = client.post(path, json=body)
    assert response.content_type == "application/json; charset=utf-8"
    assert not response.data.endswith(b"\n")
    reply = json.loads(response.data)
    assert reply["done"] is True and reply["done_reason"] == reason


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        ("error_before", 500, "unexpected EOF"),  # Ollama's own status
        ("error_first_line", 502, "unexpected EOF"),
    ],
)
def test_early_upstream_error_gets_a_real_status(
    client: FlaskClient, sim: Simulator, fault: str, status: int, message: str
) -> None:
    sim.settings.fault = fault
    response = client.post("/api/chat", json=CHAT)
    assert response.status_code == status
    assert message in response.get_json()["error"]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "error_after",
            "an error was encountered while running the model: unexpected EOF",
        ),
        ("drop_after", "cut off or malformed"),
        ("cut_before_done", "without a done line"),
    ],
)
@pytest.mark.parametrize("fmt", ["ndjson", "sse", "text"])
def test_late_upstream_error_goes_in_band(
    client: FlaskClient, sim: Simulator, fault: str, message: str, fmt: str
) -> None:
    sim.settings.fault = fault
    sim.settings.chunks = 6
    response = client.post(f"/api/chat?format={fmt}", json=CHAT)
    assert response.status_code == 200
    body = response.data.decode()
    assert body.endswith("\n")
    last = body.rstrip("\n").split("\n")[-1]
    if fmt == "ndjson":
        assert set(json.loads(last)) == {"error"}
        assert message in json.loads(last)["error"]
        assert all(json.loads(line) for line in body.splitlines())
    elif fmt == "sse":
        assert body.endswith("\n\n")
        assert 'event: error\ndata: {"error":' in body and message in last
    else:
        assert last.startswith("[error] ") and message in last


def test_heartbeats_keep_a_silent_stream_alive(make_app: Any, sim: Simulator) -> None:
    client = make_app(CHATSVC_HEARTBEAT_S=0.1).test_client()
    sim.settings.first_token_delay = 0.45
    sim.settings.chunks = 1
    parts = lines(client.post("/api/chat", json=CHAT).data)
    beats = [p for p in parts if not p["done"] and p["message"]["content"] == ""]
    assert 2 <= len(beats) <= 5
    assert all(set(p) == {"model", "created_at", "message", "done"} for p in beats)
    assert parts[-1]["done"] is True

    sse = client.post("/api/chat?format=sse", json=CHAT).data.decode()
    assert sse.count(": ping\n\n") >= 2
    text = client.post("/api/chat?format=text", json=CHAT).data
    assert b"ping" not in text and not text.startswith(b"\n")


def test_upstream_timeout_is_504_before_the_first_byte(
    make_app: Any, sim: Simulator
) -> None:
    client = make_app(
        CHATSVC_HEARTBEAT_S=1.0, CHATSVC_UPSTREAM_TIMEOUT_S=0.2
    ).test_client()
    sim.settings.first_token_delay = 0.6
    response = client.post("/api/chat", json=CHAT)
    assert response.status_code == 504
    assert "CHATSVC_UPSTREAM_TIMEOUT_S" in response.get_json()["error"]


def test_upstream_timeout_in_band_after_commit(make_app: Any, sim: Simulator) -> None:
    client = make_app(
        CHATSVC_HEARTBEAT_S=0.1, CHATSVC_UPSTREAM_TIMEOUT_S=0.3
    ).test_client()
    sim.settings.first_token_delay = 1.0
    parts = lines(client.post("/api/chat", json=CHAT).data)
    assert "CHATSVC_UPSTREAM_TIMEOUT_S" in parts[-1]["error"]


def test_unreachable_upstream_is_503(make_app: Any) -> None:
    client = make_app(OLLAMA_HOST="http://127.0.0.1:9").test_client()
    for path, body in (("/api/chat", CHAT), ("/api/generate", GENERATE)):
        response = client.post(path, json=body)
        assert response.status_code == 503
        assert (
            "cannot reach Ollama at http://127.0.0.1:9" in response.get_json()["error"]
        )
    assert client.get("/api/tags").status_code == 503
    ready = client.get("/readyz")
    assert (
        ready.status_code == 503 and "cannot reach Ollama" in ready.get_json()["error"]
    )
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_is_503_when_ollama_hangs(make_app: Any) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        client = make_app(OLLAMA_HOST=f"http://{host}:{port}").test_client()
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json() == {
        "error": f"Ollama at http://{host}:{port} did not answer within 5 s"
    }


def test_closing_the_response_hangs_up_on_ollama(
    client: FlaskClient, sim: Simulator
) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 200
    response = client.post("/api/chat", json=CHAT, buffered=False)
    body = iter(response.response)
    next(body)
    closed_at = time.monotonic()
    response.close()
    hangup = sim.wait_hangup(2)
    assert hangup is not None and hangup.chunks_sent < 10
    assert hangup.at - closed_at < 0.5


@pytest.mark.parametrize("resumable", ["0", "1"])
@pytest.mark.parametrize("fmt", ["ndjson", "sse"])
def test_a_streams_slot_is_free_before_its_last_line(
    make_app: Any,
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    resumable: str,
) -> None:
    # A client that starts its next stream on reading the last line of this one,
    # before the response has ended, is within a limit of one stream.
    close = relay.Run.close

    def slow_close(run: relay.Run) -> None:
        time.sleep(0.05)  # a slow release, that the last line must wait for
        close(run)

    monkeypatch.setattr(relay.Run, "close", slow_close)
    client = make_app(CHATSVC_MAX_STREAMS_PER_CLIENT=1).test_client()
    sim.settings.chunks = 3
    response = client.post(
        "/api/chat",
        json=CHAT,
        query_string={"format": fmt, "resumable": resumable},
        buffered=False,
    )
    body = b""
    for piece in response.response:
        body += piece
        if b'"done":true' in body.replace(b" ", b""):
            break
    else:
        pytest.fail(f"no last line in {body!r}")

    def next_stream() -> tuple[int, bytes]:
        with client.post("/api/chat", json=CHAT) as after:
            return after.status_code, after.get_data()

    # On another thread: this one is inside the first response's context.
    with ThreadPoolExecutor(1) as pool:
        status, data = pool.submit(next_stream).result()
    response.close()
    assert status == 200, data


@pytest.fixture
def tls_sim(sim: Simulator, tls_front: Any) -> tuple[str, str]:
    """The simulator behind TLS, with a certificate from a private CA: its URL and
    the CA's PEM file."""
    plain = urlsplit(sim.url)
    address = (plain.hostname, plain.port)
    port, ca_file = tls_front(lambda: socket.create_connection(address))
    return f"https://127.0.0.1:{port}", ca_file


def test_an_https_ollama_with_a_private_ca(
    make_app: Any, tls_sim: tuple[str, str]
) -> None:
    url, ca_file = tls_sim
    client = make_app(OLLAMA_HOST=url, SSL_CERT_FILE=ca_file).test_client()
    response = client.post("/api/chat", json=CHAT)
    assert response.status_code == 200
    assert lines(response.data)[-1]["done"] is True
    # Without its CA, the certificate is refused, and the error says so.
    client = make_app(OLLAMA_HOST=url).test_client()
    response = client.post("/api/chat", json=CHAT)
    assert response.status_code == 503
    assert response.get_json()["error"] == (
        f"Ollama's certificate at {url} is not trusted (unable to get local issuer "
        "certificate); set SSL_CERT_FILE to its CA's PEM file"
    )


@pytest.mark.parametrize("tls", [False, True])
def test_only_a_plain_client_socket_is_written_from_the_body_loop(tls: bool) -> None:
    # The body loop's sends (chatsvc.sockets) write bytes as they are: over
    # gunicorn's own TLS (--certfile) they would go out unencrypted, so there
    # the response generator sends every chunk through the ssl object.
    sock = socket.socket()
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sock = context.wrap_socket(
            sock, server_hostname="x", do_handshake_on_connect=False
        )
    handed: list[Any] = []
    environ = EnvironBuilder().get_environ()
    environ["gunicorn.socket"] = sock
    with contextlib.closing(sock):
        relay.Streamed(iter([b""]), handed.append)(environ, lambda *_: print)
    assert len(handed) == (0 if tls else 1)


def test_upstream_never_sees_the_browsers_headers(
    client: FlaskClient, sim: Simulator
) -> None:
    client.post(
        "/api/chat",
        json=CHAT,
        headers={
            "Origin": "http://evil.example",
            "Cookie": "session=1",
            "Authorization": "Bearer secret",
            "Host": "chatsvc.example",
        },
    )
    sent = sim.requests[-1].headers
    assert "origin" not in sent and "cookie" not in sent and "authorization" not in sent
    assert sent["host"].startswith("127.0.0.1:")


def test_pass_through_routes(client: FlaskClient) -> None:
    tags = client.get("/api/tags").get_json()
    assert [m["name"] for m in tags["models"]][:1] and "details" in tags["models"][0]
    assert "version" in client.get("/api/version").get_json()
    assert "models" in client.get("/api/ps").get_json()
    show = client.post("/api/show", json={"model": "llama3.2"})
    assert show.status_code == 200 and "model_info" in show.get_json()
    missing = client.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "model 'nope:latest' not found"}
    assert client.get("/readyz").get_json()["status"] == "ready"


def test_model_allowlist_and_default(make_app: Any, sim: Simulator) -> None:
    client = make_app(
        CHATSVC_MODELS=("qwen3",), CHATSVC_DEFAULT_MODEL="qwen3"
    ).test_client()
    assert [
        m["name"].split(":")[0] for m in client.get("/api/tags").get_json()["models"]
    ] == ["qwen3"]
    denied = client.post("/api/chat", json=CHAT)
    assert denied.status_code == 403 and "qwen3" in denied.get_json()["error"]
    ok = client.post("/api/chat", json={"messages": CHAT["messages"], "stream": False})
    assert ok.status_code == 200 and sim.requests[-1].body["model"] == "qwen3"


def test_page_is_served_to_a_browser(client: FlaskClient) -> None:
    response = client.get("/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 200 and b"<html" in response.data.lower()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_root_says_ollama_is_running_to_other_clients(
    client: FlaskClient, method: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.open("/", method=method, headers=headers)
    assert response.status_code == 200
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.headers["Content-Length"] == "17"
    assert response.data == (b"Ollama is running" if method == "GET" else b"")


def test_app_factory_rejects_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatsvc import create_app
    from chatsvc.config import ConfigError

    monkeypatch.setenv("CHATSVC_HEARTBEAT_S", "-1")
    with pytest.raises(ConfigError, match="CHATSVC_HEARTBEAT_S"):
        create_app()


def test_app_is_flask(app: Flask) -> None:
    assert isinstance(app, Flask)
