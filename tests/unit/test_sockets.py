"""chatsvc.sockets answers as the socket module's own calls do."""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time

import pytest

from chatsvc import sockets


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_what_one_sends_the_other_reads(pair):
    a, b = pair
    reader = sockets.Reader(4)
    assert sockets.send(a, b"hello") == 5
    assert reader.recv(b) == b"hell"  # at most the reader's size
    assert reader.recv(b) == b"o"


def test_nothing_to_read_is_blocking_io_error(pair):
    with pytest.raises(BlockingIOError):
        sockets.Reader(64).recv(pair[1])


def test_a_full_socket_takes_part_then_nothing(pair):
    a, _ = pair
    data = b"x" * (1 << 24)
    sent = sockets.send(a, data)
    assert 0 < sent < len(data)
    with pytest.raises(BlockingIOError):
        while True:
            sockets.send(a, data)


def test_the_end_of_the_stream_reads_empty(pair):
    a, b = pair
    a.close()
    assert sockets.Reader(64).recv(b) == b""


def test_a_reset_is_connection_reset_error():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    # SO_LINGER 0: close sends RST, as a client that crashed does.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    select.select([client], [], [], 5)  # the reset has arrived
    try:
        with pytest.raises(ConnectionResetError):
            sockets.Reader(64).recv(client)
    finally:
        client.close()
        server.close()


def test_a_gone_reader_is_an_error_not_sigpipe(pair):
    a, b = pair
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        sockets.send(a, b"x")


def test_a_closed_socket_is_bad_file_descriptor(pair):
    # Its number is never used after close: another socket may have it by then.
    a, b = pair
    a.close()
    with pytest.raises(OSError) as raised:
        sockets.send(a, b"x")
    assert raised.value.errno == 9  # EBADF
    b.close()
    with pytest.raises(OSError):
        sockets.Reader(64).recv(b)


def test_a_call_keeps_the_gil(pair):
    # A thread waiting for the GIL gets it from one running bytecode only after
    # the switch interval, and may get it whenever a call lets go.
    a, b = pair
    reader = sockets.Reader(64)
    spins = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal spins
        while not stop.is_set():
            spins += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.1)  # far longer than the calls below take
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)  # the spinner has had the GIL and now waits for it
        before = spins
        for _ in range(200):
            sockets.send(a, b"x")
            reader.recv(b)
        assert spins == before
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
