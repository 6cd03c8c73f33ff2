"""One thread that paces every streamed answer, as Go's scheduler does Ollama's.

A thread per stream sleeping between lines cost a wake-up, a GIL hand-over and
several system calls per line: at hundreds of streams the simulator took more of
a 2-core machine than the gateway it is there to test. Here one thread sleeps
until the next line is due anywhere, writes every line that is due, and hears
each client's hang-up through epoll. A client that stops reading goes back to
its own thread (Handler.write), so it holds up no other stream.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol

from .wire import Gone

# What a paced answer is: each yield is when its next step is due (monotonic).
Steps = Generator[float, None, None]


class Paced(Protocol):
    """The handler side: its socket, and whether its writes have fallen behind."""

    connection: socket.socket

    @property
    def behind(self) -> bool: ...


@dataclass(eq=False)
class _Job:
    steps: Steps
    handler: Paced
    fd: int
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    due: float | None = None  # set when handed back: when its next step is due
    over: bool = False


class Pacer:
    def __init__(self) -> None:
        self._poll = select.epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poll.register(self._wake_r, select.EPOLLIN)
        self._lock = threading.Lock()
        self._new: list[tuple[float, _Job]] = []
        self._due: list[tuple[float, int, _Job]] = []
        self._by_fd: dict[int, _Job] = {}
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def run(self, steps: Steps, due: float, handler: Paced) -> float | None:
        """Take steps over from the step due at due; block until they end.

        Returns None once they have all run, or when the next step is due if the
        client fell behind and the caller's thread must run the rest itself.
        Raises what a step raised (Gone: the client hung up).
        """
        job = _Job(steps, handler, handler.connection.fileno())
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="simulator-pacer", daemon=True
                )
                self._thread.start()
            self._new.append((due, job))
        os.write(self._wake_w, b"x")
        job.ended.wait()
        if job.error is not None:
            raise job.error
        return job.due

    def _run(self) -> None:
        while True:
            timeout = max(0.0, self._due[0][0] - time.monotonic()) if self._due else -1
            for fd, _ in self._poll.poll(timeout):
                if fd == self._wake_r:
                    self._take_new()
                elif (job := self._by_fd.get(fd)) is not None and _gone(job):
                    self._end(job, Gone())
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, job = heapq.heappop(self._due)
                if not job.over:
                    self._step(job)

    def _take_new(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            new, self._new = self._new, []
        for due, job in new:
            self._by_fd[job.fd] = job
            # RDHUP, once: a pipelined request (readable bytes) is no hang-up.
            self._poll.register(job.fd, select.EPOLLRDHUP | select.EPOLLONESHOT)
            heapq.heappush(self._due, (due, next(self._order), job))

    def _step(self, job: _Job) -> None:
        try:
            due = next(job.steps)
        except StopIteration:
            self._end(job, None)
            return
        except BaseException as exc:
            self._end(job, exc)
            return
        if job.handler.behind:
            self._end(job, None, due)
        else:
            heapq.heappush(self._due, (due, next(self._order), job))

    def _end(
        self, job: _Job, error: BaseException | None, due: float | None = None
    ) -> None:
        job.over = True
        job.error, job.due = error, due
        del self._by_fd[job.fd]
        try:
            self._poll.unregister(job.fd)
        except OSError:
            pass  # already closed
        job.ended.set()


def _gone(job: _Job) -> bool:
    """As Handler.gone: the peer closed, not merely sent more bytes."""
    try:
        peeked = job.handler.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return peeked == b""
