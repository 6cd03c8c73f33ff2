"""create, copy and delete, on this run's own model names only."""

from __future__ import annotations

from typing import Any

from confwire import Answer, Servers, answer_differences, call


def _each(
    servers: Servers, path: str, method: str, body_for: dict[str, Any], kind: str
) -> tuple[Answer, Answer]:
    """The same request with a name of its own for each side; no difference."""
    direct = call(servers.ollama, method, path, body_for["direct"])
    other = call(servers.other, method, path, body_for["other"])
    diffs = answer_differences(direct, other, servers.values, kind)
    assert not diffs, f"{method} {path}: Ollama vs other\n" + "\n".join(diffs)
    return direct, other


def test_create_copy_delete(servers: Servers) -> None:
    name = servers.model.name
    sides = ("direct", "other")
    created = {side: f"{servers.model.prefix}-created-{side}" for side in sides}
    copied = {side: f"{servers.model.prefix}-copied-{side}" for side in sides}

    primer = f"{servers.model.prefix}-primer"
    try:
        streamed = {
            s: {"model": created[s], "from": name, "system": "Hi."} for s in sides
        }
        # The first create writes the system layer and a later one reuses it: make it
        # exist before either side runs, so both report "using existing layer".
        call(
            servers.ollama,
            "POST",
            "/api/create",
            {**streamed["direct"], "model": primer},
        )
        _each(servers, "/api/create", "POST", streamed, "ndjson")
        whole = {s: {"model": created[s], "from": name, "stream": False} for s in sides}
        _each(servers, "/api/create", "POST", whole, "json")
        copy = {s: {"source": created[s], "destination": copied[s]} for s in sides}
        _each(servers, "/api/copy", "POST", copy, "empty")
        tags = call(servers.ollama, "GET", "/api/tags").json()["models"]
        assert {f"{copied['direct']}:latest", f"{created['direct']}:latest"} <= {
            m["name"] for m in tags
        }
        for names in (copied, created):
            delete = {s: {"model": names[s]} for s in sides}
            direct, _ = _each(servers, "/api/delete", "DELETE", delete, "empty")
            assert direct.status == 200

    finally:
        # Leftovers would sit in /api/tags with equal modified_at, in no set order.
        for leftover in (primer, *created.values(), *copied.values()):
            call(servers.ollama, "DELETE", "/api/delete", {"model": leftover})


def test_create_errors(servers: Servers) -> None:
    servers.check("POST", "/api/create", {"model": f"{servers.model.prefix}-nothing"})
    body = {"model": "", "from": servers.model.name}
    servers.check_own_error("POST", "/api/create", body, names="model is required")


def test_copy_unknown_source(servers: Servers) -> None:
    body = {"source": f"{servers.model.prefix}-absent",
            "destination": f"{servers.model.prefix}-never"}  # fmt: skip
    direct, _ = servers.check("POST", "/api/copy", body)
    assert direct.status == 404


def test_copy_null_source(servers: Servers) -> None:
    body = {"source": None, "destination": f"{servers.model.prefix}-never"}
    if servers.values:  # chatsvc refuses it itself, in its own words
        servers.check_own_error("POST", "/api/copy", body, names="source")
    else:
        direct, _ = servers.check("POST", "/api/copy", body)
        assert direct.status == 400


def test_delete_unknown(servers: Servers) -> None:
    body = {"model": f"{servers.model.prefix}-absent"}
    direct, _ = servers.check("DELETE", "/api/delete", body)
    assert direct.status == 404
