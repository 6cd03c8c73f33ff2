"""Canaries for the httpcore internals chatsvc.transport leans on."""

from __future__ import annotations

import socket

import h11
import httpx

from chatsvc import transport
from chatsvc.simulator import Simulator

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def test_the_socket_is_reported_when_the_request_is_written(sim: Simulator) -> None:
    reported: list[socket.socket] = []
    with httpx.Client(transport=transport.Transport()) as client:
        with transport.report_socket(reported.append):
            with client.stream("POST", f"{sim.url}/api/chat", json=CHAT) as response:
                assert response.status_code == 200
                # Once per write of the request, always its one socket.
                assert reported and all(s is reported[0] for s in reported)
                port = reported[0].getpeername()[1]
                assert port == int(sim.url.rsplit(":", 1)[1])


def test_body_of_gives_the_h11_state_and_socket_of_an_unread_body(
    sim: Simulator,
) -> None:
    sim.settings.chunks = 3
    with httpx.Client(transport=transport.Transport()) as client:
        request = client.build_request("POST", f"{sim.url}/api/chat", json=CHAT)
        response = client.send(request, stream=True)
        conn, sock = transport.body_of(response)
        assert isinstance(conn, h11.Connection) and isinstance(sock, socket.socket)
        assert conn.their_state is h11.SEND_BODY
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                assert isinstance(event, h11.EndOfMessage)
                break
        assert body.count(b"\n") == 4 and b'"done":true' in body
        response.close()
        # Read to its end through h11, the connection goes back to the pool.
        again = client.post(f"{sim.url}/api/chat", json={**CHAT, "stream": False})
        assert again.status_code == 200
        assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]


def test_the_client_keeps_no_cookies() -> None:
    sent: list[str | None] = []

    def ollama(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=alice; Path=/"})

    with httpx.Client(transport=httpx.MockTransport(ollama)) as client:
        client.get("http://ollama/api/version")
        client.get("http://ollama/api/version")
        assert sent == [None, "session=alice"]  # httpx's own way: it keeps them
    sent.clear()
    with httpx.Client(transport=httpx.MockTransport(ollama)) as client:
        transport.keep_no_cookies(client)
        client.get("http://ollama/api/version")
        client.get("http://ollama/api/version")
        assert sent == [None, None] and not client.cookies
