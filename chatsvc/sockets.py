"""Non-blocking socket calls that keep the GIL, for the loop that serves every stream.

One thread per worker reads every stream's body from Ollama and writes each
chunk to its client (chatsvc.upstream._Bodies, chatsvc.relay.Writer). CPython
lets go of the GIL around every socket call, and taking it back waits behind
whichever thread took it meanwhile: while a burst of new streams keeps request
threads busy, up to the switch interval (5 ms) each time. That loop makes two
calls per chunk for each ready stream, so those waits add up across the streams
of one wake (a convoy). A call that cannot block gains nothing from letting go:
these make the same system calls through ctypes.PyDLL, which keeps the GIL.
"""

from __future__ import annotations

import ctypes
import os
import socket

_libc = ctypes.PyDLL(None, use_errno=True)
_send = _libc.send
_send.restype = ctypes.c_ssize_t
_recv = _libc.recv
_recv.restype = ctypes.c_ssize_t
# Never wait; and a client gone gives EPIPE, not SIGPIPE.
_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


def send(sock: socket.socket, data: bytes) -> int:
    """How much of data sock took at once, as sock.send would say."""
    # fileno() now, not kept: -1 once closed (EBADF), never a number reused since.
    sent: int = _send(sock.fileno(), data, len(data), _FLAGS)
    if sent < 0:
        _raise()
    return sent


class Reader:
    """recv for one thread, into a buffer of its own."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buffer = ctypes.create_string_buffer(size)

    def recv(self, sock: socket.socket) -> bytes:
        """What sock has, up to size: b"" at its end, as sock.recv would say."""
        got: int = _recv(sock.fileno(), self._buffer, self._size, _FLAGS)
        if got < 0:
            _raise()
        return ctypes.string_at(self._buffer, got)


def _raise() -> None:
    code = ctypes.get_errno()
    # OSError picks the subclass socket's own calls raise: BlockingIOError for
    # EAGAIN, ConnectionResetError, BrokenPipeError...
    raise OSError(code, os.strerror(code))
