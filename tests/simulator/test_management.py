"""Model management as Ollama streams it (ollama-wire.md §9), and the catalogue."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import requests

from chatsvc.simulator import Simulator
from simulator.rawhttp import JSON_UTF8, body_of, dechunk, error_body, exchange, send

MISSING = "pull model manifest: file does not exist"
GGUF = b"GGUF" + bytes(range(256)) * 64


def names(sim: Simulator) -> list[str]:
    return [m["name"] for m in requests.get(sim.url + "/api/tags").json()["models"]]


def lines(sim: Simulator, path: str, body: Any) -> tuple[int, str, list[Any]]:
    status, headers, payload = exchange(sim, path, body)
    return status, headers["content-type"], [json.loads(c) for c in dechunk(payload)]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- pull ---------------------------------------------------------------------------


def test_pull_progress(sim: Simulator) -> None:
    sim.settings.pull_speed = 10e9  # 10 MB a tick: a few lines for the weights
    status, ctype, got = lines(sim, "/api/pull", {"model": "all-minilm"})
    assert (status, ctype) == (200, "application/x-ndjson")
    statuses = [line["status"] for line in got]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = got[1:-3]
    assert all(re.fullmatch(r"pulling [0-9a-f]{12}", s["status"]) for s in layers)
    assert all(s["status"][8:] == s["digest"][7:19] for s in layers)
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", s["digest"]) for s in layers)
    weights = [s for s in layers if s["digest"] == layers[0]["digest"]]
    assert len(weights) == 5  # 46 MB at 10 MB a tick
    assert list(weights[0]) == ["status", "digest", "total"]  # completed 0: omitted
    assert list(weights[1]) == ["status", "digest", "total", "completed"]
    assert [w["completed"] for w in weights[1:]] == [
        10**7,
        2 * 10**7,
        3 * 10**7,
        4 * 10**7,
    ]
    assert len({s["digest"] for s in layers}) == 5  # weights, template, ..., config
    assert sum({s["digest"]: s["total"] for s in layers}.values()) == 45960996
    assert names(sim)[0] == "all-minilm:latest"  # newest first


def test_pull_of_an_installed_model_reports_each_layer_once(sim: Simulator) -> None:
    _, _, got = lines(sim, "/api/pull", {"name": "llama3.2"})  # the legacy key
    layers = got[1:-3]
    assert len(layers) == 5 and all(s["completed"] == s["total"] for s in layers)


@pytest.mark.parametrize("stream", [True, None])
def test_pull_of_an_unknown_name_fails_in_band(sim: Simulator, stream: Any) -> None:
    body = {"model": "no-such-model", "stream": stream}
    status, _, got = lines(sim, "/api/pull", body)
    assert status == 200 and got == [{"status": "pulling manifest"}, {"error": MISSING}]
    assert "no-such-model:latest" not in names(sim)


def test_pull_without_streaming(sim: Simulator) -> None:
    status, headers, payload = exchange(
        sim, "/api/pull", {"model": "all-minilm", "stream": False}
    )
    assert (status, headers["content-type"], payload) == (
        200,
        "application/json",
        b'{"status":"success"}',
    )
    status, headers, payload = exchange(
        sim, "/api/pull", {"model": "nope", "stream": False}
    )
    assert (status, headers["content-type"]) == (500, "application/json")
    assert payload == error_body(MISSING)  # a 500, not a 404


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "missing request body"),
        ({}, "invalid model name"),
        ({"model": "bad name"}, "invalid model name"),
        (
            {"model": "x", "insecure": "yes"},
            "json: cannot unmarshal string into Go struct field "
            "PullRequest.insecure of type bool",
        ),
    ],
)
def test_pull_rejects(sim: Simulator, body: Any, error: str) -> None:
    status, headers, payload = exchange(sim, "/api/pull", body)
    assert (status, headers["content-type"], payload) == (
        400,
        JSON_UTF8,
        error_body(error),
    )


def test_pull_pace_streams_and_the_first_line_comes_at_once(sim: Simulator) -> None:
    sim.settings.pull_tick = 0.02
    sim.settings.pull_speed = 1.15e8  # 2.3 MB a tick: 20 ticks for all-minilm
    arrivals = []
    with httpx.Client() as http:
        started = time.monotonic()
        body = {"model": "all-minilm"}
        with http.stream("POST", sim.url + "/api/pull", json=body) as r:
            for _ in r.iter_lines():
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 1 + 20 + 4 + 3
    assert arrivals[-1] >= 0.02 * (len(arrivals) - 1)  # one line a tick
    # Headers and the first line at once, unlike chat: long before the end.
    assert arrivals[0] < arrivals[-1] / 4


def test_pull_hangup_is_recorded_and_installs_nothing(sim: Simulator) -> None:
    sim.settings.pull_tick = 0.02
    sim.settings.pull_speed = 1e6  # a slow download
    with requests.post(
        sim.url + "/api/pull", json={"model": "all-minilm"}, stream=True
    ) as r:
        got = r.iter_lines()
        for _ in range(4):
            next(got)
    closed = time.monotonic()
    hangup = sim.wait_hangup(2)
    assert hangup is not None and hangup.path == "/api/pull"
    assert 4 <= hangup.chunks_sent < 10 and hangup.at - closed < 0.1
    assert "all-minilm:latest" not in names(sim)


def test_pull_without_streaming_is_silent_until_done_and_notices_a_hangup(
    sim: Simulator,
) -> None:
    sim.settings.pull_tick = 0.02
    sim.settings.pull_speed = 1e6
    with send(sim, "/api/pull", {"model": "all-minilm", "stream": False}) as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing, not even the status line
    hangup = sim.wait_hangup(2)
    assert hangup is not None and (hangup.path, hangup.chunks_sent) == ("/api/pull", 0)


def test_pull_faults(sim: Simulator) -> None:
    sim.settings.fault_after = 2
    body = {"model": "all-minilm"}
    message = sim.settings.fault_message
    sim.settings.fault = "error_before"
    status, headers, payload = exchange(sim, "/api/pull", body)
    assert (status, headers["content-type"]) == (500, "application/json")
    assert dechunk(payload) == [error_body(message)]
    sim.settings.fault = "error_after"
    status, _, got = lines(sim, "/api/pull", body)
    assert status == 200 and len(got) == 3 and got[-1] == {"error": message}
    sim.settings.fault = "cut_before_done"
    assert lines(sim, "/api/pull", body)[2][-1] == {"status": "writing manifest"}
    sim.settings.fault = "drop_after"
    _, headers, payload = exchange(sim, "/api/pull", body | {"name": "gemma3"})
    assert payload.count(b'"status"') == 2 and not payload.endswith(b"0\r\n\r\n")
    status, headers, payload = exchange(
        sim, "/api/pull", {"model": "gemma3", "stream": False}
    )
    assert (status, payload) == (0, b"")  # not a byte before the connection closed
    assert "gemma3:latest" not in names(sim) and sim.hangups == []


# --- push ---------------------------------------------------------------------------


def test_push(sim: Simulator) -> None:
    status, headers, payload = exchange(sim, "/api/push", {})
    assert (status, headers["content-type"], payload) == (
        400,
        JSON_UTF8,
        error_body("model is required"),
    )
    status, _, got = lines(sim, "/api/push", {"model": "someone/nothing"})
    assert status == 200 and got == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
        {
            "error": "open /root/.ollama/models/manifests/registry.ollama.ai/"
            "someone/nothing/latest: no such file or directory"
        },
    ]
    status, _, got = lines(sim, "/api/push", {"model": "llama3.2"})
    assert (
        got[0] == {"status": "retrieving manifest"}
        and "registry.ollama.ai" in got[1]["error"]
    )
    status, headers, payload = exchange(
        sim, "/api/push", {"model": "x/y", "stream": False}
    )
    assert (status, headers["content-type"]) == (500, "application/json")
    assert json.loads(payload)["error"].endswith("no such file or directory")


# --- create, copy, delete -----------------------------------------------------------


def test_create_from_an_installed_model(sim: Simulator) -> None:
    body = {"model": "mine", "from": "llama3.2", "system": "Be brief."}
    status, _, got = lines(sim, "/api/create", body)
    statuses = [g["status"] for g in got]
    assert status == 200 and statuses[-2:] == ["writing manifest", "success"]
    assert sum(s.startswith("using existing layer sha256:") for s in statuses) == 4
    assert sum(s.startswith("creating new layer sha256:") for s in statuses) == 1
    assert all(list(g) == ["status"] for g in got)  # the digest is inside status
    assert names(sim)[0] == "mine:latest"
    shown = requests.post(sim.url + "/api/show", json={"model": "mine"}).json()
    assert shown["system"] == "Be brief." and shown["details"]["family"] == "llama"


def test_create_from_a_model_not_installed_pulls_it_first(sim: Simulator) -> None:
    _, _, got = lines(sim, "/api/create", {"model": "mini", "from": "all-minilm"})
    statuses = [g["status"] for g in got]
    assert statuses[0] == "pulling manifest" and statuses.count("success") == 2
    assert statuses[-1] == "success" and "mini:latest" in names(sim)


@pytest.mark.parametrize(
    ("body", "status", "ctype", "error"),
    [
        ({"from": "llama3.2"}, 400, JSON_UTF8, "invalid model name"),
        (
            {"model": "m", "files": {"/abs": "sha256:" + "0" * 64}},
            400,
            JSON_UTF8,
            "file path must be relative",
        ),
        (
            {"model": "m", "files": {"a.gguf": "sha256:12"}},
            400,
            JSON_UTF8,
            "invalid digest format",
        ),
        # Errors from the create goroutine before its first line: no charset.
        (
            {"model": "m"},
            400,
            "application/json",
            "neither 'from' or 'files' was specified",
        ),
        (
            {"model": "m", "from": "bad name"},
            400,
            "application/json",
            "invalid model name",
        ),
        (
            {"model": "m", "files": {"a.gguf": "sha256:" + "0" * 64}},
            500,
            "application/json",
            "open /root/.ollama/models/blobs/sha256-"
            + "0" * 64
            + ": no such file or directory",
        ),
    ],
)
def test_create_rejects(
    sim: Simulator, body: Any, status: int, ctype: str, error: str
) -> None:
    got = exchange(sim, "/api/create", body)
    assert (got[0], got[1]["content-type"], body_of(got[1], got[2])) == (
        status,
        ctype,
        error_body(error),
    )


def test_create_from_an_unknown_model_fails_in_band(sim: Simulator) -> None:
    _, _, got = lines(sim, "/api/create", {"model": "m", "from": "no-such"})
    assert got == [{"status": "pulling manifest"}, {"error": MISSING}]


def test_create_from_blobs(sim: Simulator) -> None:
    digest = digest_of(GGUF)
    assert requests.post(f"{sim.url}/api/blobs/{digest}", data=GGUF).status_code == 201
    _, _, got = lines(
        sim, "/api/create", {"model": "fromfile", "files": {"m.gguf": digest}}
    )
    assert [g["status"] for g in got] == [
        "parsing GGUF",
        f"using existing layer {digest}",
        "writing manifest",
        "success",
    ]
    text = b"not a model"
    other = digest_of(text)
    requests.post(f"{sim.url}/api/blobs/{other}", data=text)
    status, headers, payload = exchange(
        sim, "/api/create", {"model": "x", "files": {"x.bin": other}}
    )
    assert (status, body_of(headers, payload)) == (400, error_body("unknown type"))


def test_copy_and_delete(sim: Simulator) -> None:
    status, headers, payload = exchange(
        sim, "/api/copy", {"source": "qwen3", "destination": "q:v2"}
    )
    assert (status, payload, headers.get("content-type")) == (200, b"", None)
    assert names(sim)[0] == "q:v2"
    shown = requests.post(sim.url + "/api/show", json={"model": "q:v2"}).json()
    assert "thinking" in shown["capabilities"]  # a copy of qwen3
    status, headers, payload = exchange(sim, "/api/delete", {"model": "q:v2"}, "DELETE")
    assert (status, payload, headers.get("content-type")) == (200, b"", None)
    assert "q:v2" not in names(sim)
    status, _, payload = exchange(sim, "/api/delete", {"name": "q:v2"}, "DELETE")
    assert (status, payload) == (404, error_body("model 'q:v2' not found"))


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "error"),
    [
        ("/api/copy", "POST", b"", 400, "missing request body"),
        (
            "/api/copy",
            "POST",
            {"source": "", "destination": "b"},
            400,
            'source "" is invalid',
        ),
        (
            "/api/copy",
            "POST",
            {"source": None, "destination": "b"},
            400,
            'source "" is invalid',
        ),
        (
            "/api/copy",
            "POST",
            {"source": "a", "destination": "b c"},
            400,
            'destination "b c" is invalid',
        ),
        (
            "/api/copy",
            "POST",
            {"source": "nope", "destination": "b"},
            404,
            'model "nope" not found',
        ),
        ("/api/delete", "DELETE", b"", 400, "missing request body"),
        ("/api/delete", "DELETE", {}, 400, "model is required"),
        ("/api/delete", "DELETE", {"model": "nope"}, 404, "model 'nope' not found"),
    ],
)
def test_copy_and_delete_reject(
    sim: Simulator, path: str, method: str, body: Any, status: int, error: str
) -> None:
    got = exchange(sim, path, body, method)
    assert (got[0], got[1]["content-type"], got[2]) == (
        status,
        JSON_UTF8,
        error_body(error),
    )


def test_delete_leaves_the_runner_and_the_cli_unloads_first(
    sim: Simulator, client: ollama.Client
) -> None:
    client.generate(model="qwen3", prompt="hi")
    client.delete("qwen3")  # DeleteHandler removes the manifest only
    assert [m.model for m in client.ps().models] == ["qwen3:latest"]
    assert "qwen3:latest" not in names(sim)
    # `ollama rm M` (§12): show, the 0s unload, then delete with the legacy name
    client.generate(model="llama3.2", prompt="hi")
    assert requests.post(sim.url + "/api/show", json={"model": "llama3.2"}).ok
    unload = {"model": "llama3.2", "prompt": "", "keep_alive": "0s", "stream": False}
    reply = requests.post(sim.url + "/api/generate", json=unload).json()
    assert reply["done_reason"] == "unload"
    status, _, payload = exchange(
        sim, "/api/delete", {"model": "", "name": "llama3.2"}, "DELETE"
    )
    assert (status, payload) == (200, b"")
    assert [m.model for m in client.ps().models] == ["qwen3:latest"]


# --- blobs --------------------------------------------------------------------------


def test_blobs(sim: Simulator) -> None:
    digest = digest_of(GGUF)
    url = f"{sim.url}/api/blobs/{digest}"
    assert requests.head(url).status_code == 404
    created = requests.post(url, data=GGUF)
    assert (created.status_code, created.content) == (201, b"")
    assert requests.head(url).status_code == 200
    assert requests.head(url.replace("sha256:", "sha256-")).status_code == 200
    again = requests.post(url, data=b"not read")
    assert (again.status_code, again.content) == (200, b"")
    bad = requests.head(f"{sim.url}/api/blobs/sha256:abc")
    assert (bad.status_code, bad.content) == (400, b"")  # HEAD: never a body
    wrong = requests.post(f"{sim.url}/api/blobs/sha256:{'ab' * 32}", data=b"x")
    expected = (
        f'digest mismatch, expected "sha256:{"ab" * 32}", got "{digest_of(b"x")}"'
    )
    assert (wrong.status_code, wrong.json()) == (400, {"error": expected})
    upper = requests.post(
        f"{sim.url}/api/blobs/{digest_of(b'y').upper().replace('SHA256', 'sha256')}",
        data=b"y",
    )
    assert upper.status_code == 400  # compared as a string with the lower-case digest
    bad_post = requests.post(f"{sim.url}/api/blobs/md5:00", data=b"y")
    assert (bad_post.status_code, bad_post.json()) == (
        400,
        {"error": "invalid digest format"},
    )


def test_blob_upload_streams_in_chunks(sim: Simulator) -> None:
    part = bytes(range(256)) * 4096  # 1 MiB

    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield part

    digest = digest_of(part * 32)
    r = requests.post(f"{sim.url}/api/blobs/{digest}", data=chunks())  # chunked
    assert r.status_code == 201
    assert requests.head(f"{sim.url}/api/blobs/{digest}").status_code == 200


# --- the official client ------------------------------------------------------------


def test_official_client(sim: Simulator, client: ollama.Client, tmp_path: Path) -> None:
    assert client.pull("all-minilm").status == "success"  # stream=False by default
    progress = list(client.pull("gemma3", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.total and p.completed for p in progress)
    with pytest.raises(ollama.ResponseError) as info:
        list(client.pull("no-such-model", stream=True))
    assert (info.value.status_code, info.value.error) == (-1, MISSING)
    with pytest.raises(ollama.ResponseError) as info:
        client.push("llama3.2")
    assert info.value.status_code == 500

    blob = tmp_path / "model.gguf"
    blob.write_bytes(GGUF)
    digest = client.create_blob(blob)
    assert digest == digest_of(GGUF)
    assert client.create("fromfile", files={"model.gguf": digest}).status == "success"
    assert client.create("brief", from_="llama3.2", system="Short.").status == "success"
    assert client.copy("brief", "brief:v2").status == "success"
    assert client.show("brief:v2").capabilities == ["completion", "tools"]
    assert client.delete("brief").status == "success"
    listed = [m.model for m in client.list().models]
    assert listed[:4] == [
        "brief:v2",
        "fromfile:latest",
        "gemma3:latest",
        "all-minilm:latest",
    ]
    assert "brief:latest" not in listed
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("brief")
    assert (info.value.status_code, info.value.error) == (
        404,
        "model 'brief' not found",
    )
    client.generate(model="brief:v2", prompt="hi", keep_alive="1m")
    assert [m.model for m in client.ps().models] == ["brief:v2"]
