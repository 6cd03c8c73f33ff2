"""chatsvc's benchmark: chatsvc against two common relays of the same upstream.

One command, from the repository root:

    .venv/bin/python bench/run.py            # about 6-8 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # a smoke run of a minute or so

It starts the Ollama simulator, chatsvc under gunicorn (gthread, 2 workers), the
simplest Flask relay under the same gunicorn settings and the common FastAPI
recipe under uvicorn --workers 2, each in its own process group on 127.0.0.1.
Targets are interleaved run by run ("direct" is the simulator itself) and the
results go to one table on stdout and to bench/results/ (JSON, a Markdown copy
for README's Performance section, the servers' logs and the profiles).
Everything it started is stopped at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
RESULTS = BENCH / "results"
TICK = os.sysconf("SC_CLK_TCK")

TARGETS = ("direct", "chatsvc", "flask", "fastapi")
TITLES = {
    "direct": "direct (simulator)",
    "chatsvc": "chatsvc",
    "flask": "Flask relay",
    "fastapi": "FastAPI recipe",
}
HEARTBEAT_S = 2.0
INTERVAL = 0.05  # 20 chunks/s, for the concurrency and flowing-cancel scenarios
SILENCE = 10.0  # first-token silence for the cancel-during-silence scenario


# --- setup --------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-run under the project's venv, where chatsvc's dependencies live."""
    if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])


def ensure_requirements() -> None:
    """Install bench/requirements.txt into the venv when a pin is not met."""
    wanted = {}
    for line in (BENCH / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            wanted[name.split("[")[0]] = version
    missing = []
    for name, version in wanted.items():
        try:
            if md.version(name) != version:
                missing.append(name)
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        print(f"bench: installing bench/requirements.txt ({', '.join(missing)})")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                str(BENCH / "requirements.txt"),
            ],
            check=True,
        )


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- /proc --------------------------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Every live process in session sid (a server we started: master + workers)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(name))
    return pids


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes (all their threads)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_busy() -> float:
    """CPU seconds spent by the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- processes ----------------------------------------------------------------


class Server:
    """A process group we started: the simulator, a gunicorn or a uvicorn."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.spawn_args: dict[str, Any] = {}
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def rss(self) -> int:
        return rss_kib(self.pids)


class Fleet:
    """Starts servers in their own sessions and stops every one of them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.servers: list[Server] = []
        self._logs: list[Any] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        stdout_pipe: bool = False,
        cwd: Path = ROOT,
    ) -> Server:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
        self._logs.append(log)
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
        )
        server = Server(name, proc, port)
        server.spawn_args = {"argv": argv, "env": env, "cwd": cwd, "log": log}
        self.servers.append(server)
        return server

    def restart(self, server: Server) -> None:
        """Kill a wedged server's whole group and start it again on its port."""
        _stop_group(server.proc, grace=3)
        args = server.spawn_args
        server.proc = subprocess.Popen(
            args["argv"],
            cwd=args["cwd"],
            env=args["env"],
            stdin=subprocess.DEVNULL,
            stdout=args["log"],
            stderr=args["log"],
            start_new_session=True,
        )
        server.restarts += 1

    def stop_all(self) -> None:
        # Servers before the simulator; SIGINT is gunicorn's quick shutdown (it
        # would otherwise wait graceful_timeout for open streams).
        for server in reversed(self.servers):
            if server.proc.poll() is None:
                try:
                    os.kill(server.proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for server in reversed(self.servers):
            _stop_group(server.proc, grace=8)
        for log in self._logs:
            log.close()


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if session_pids(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(5)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("CHATSVC_", "OLLAMA"))
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_simulator(fleet: Fleet) -> Server:
    argv = [
        sys.executable,
        "-m",
        "chatsvc.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--first-token-delay",
        "0",
        "--interval",
        "0",
    ]
    server = fleet.spawn("simulator", argv, child_env(), 0, stdout_pipe=True)
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline().decode()
    match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not match:
        raise RuntimeError(f"the simulator did not start: {line!r}")
    server.port = int(match.group(1))
    return server


def start_targets(fleet: Fleet, sim: Server, metrics_dir: str) -> dict[str, Server]:
    upstream = f"http://127.0.0.1:{sim.port}"
    gunicorn = str(ROOT / ".venv" / "bin" / "gunicorn")
    servers = {"direct": sim}
    port = free_port()
    servers["chatsvc"] = fleet.spawn(
        "chatsvc",
        [gunicorn, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        child_env(
            OLLAMA_HOST=upstream,
            WEB_CONCURRENCY="2",
            CHATSVC_HEARTBEAT_S=str(HEARTBEAT_S),
            CHATSVC_MAX_STREAMS="600",
            CHATSVC_MAX_STREAMS_PER_CLIENT="600",
            CHATSVC_GRACEFUL_TIMEOUT_S="5",
            PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        ),
        port,
    )
    port = free_port()
    # The same gunicorn settings as chatsvc's gunicorn.conf.py, with the thread
    # count that 500 streams over 2 workers need.
    servers["flask"] = fleet.spawn(
        "flask",
        [
            gunicorn,
            "--worker-class",
            "gthread",
            "--workers",
            "2",
            "--threads",
            "300",
            "--worker-connections",
            "600",
            "--timeout",
            "30",
            "--keep-alive",
            "75",
            "--graceful-timeout",
            "5",
            "--no-control-socket",
            "--bind",
            f"127.0.0.1:{port}",
            "ref_flask:app",
        ],
        child_env(OLLAMA_HOST=upstream),
        port,
        cwd=BENCH,  # not the root: gunicorn would read chatsvc's gunicorn.conf.py
    )
    port = free_port()
    servers["fastapi"] = fleet.spawn(
        "fastapi",
        [
            str(ROOT / ".venv" / "bin" / "uvicorn"),
            "ref_fastapi:app",
            "--app-dir",
            str(BENCH),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        child_env(OLLAMA_HOST=upstream),
        port,
        cwd=BENCH,
    )
    return servers


def wait_ready(servers: dict[str, Server], timeout: float = 60.0) -> None:
    """Each server answers a stream, with its master and both workers up."""
    deadline = time.monotonic() + timeout
    for name, server in servers.items():
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {server.proc.returncode}; "
                    f"see bench/results/logs/{name}.log"
                )
            try:
                if (name == "direct" or len(server.pids) >= 3) and load.one_stream(
                    server.port, 2, timeout=5
                ).complete:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready in {timeout:.0f}s")
            time.sleep(0.2)


# --- simulator control --------------------------------------------------------


class Sim:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.base = f"http://127.0.0.1:{server.port}"

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def set(self, **settings: Any) -> None:
        self._call("/_sim/settings", settings)

    def stats(self) -> dict[str, Any]:
        return self._call("/_sim/stats")  # type: ignore[no-any-return]

    def wait_idle(self, timeout: float = 20.0) -> bool:
        """Wait for the simulator to have no stream open (the previous run ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["streams_open"] == 0:
                return True
            time.sleep(0.05)
        return False


# --- statistics ---------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rounds(n: int) -> Iterator[tuple[int, list[str]]]:
    """Interleave: every round runs each target once, the order rotating."""
    for r in range(n):
        k = r % len(TARGETS)
        yield r, list(TARGETS[k:] + TARGETS[:k])


class Phase:
    """Records the machine's CPU use by others while a phase runs (noise check)."""

    def __init__(self, name: str, servers: dict[str, Server]) -> None:
        self.name = name
        self.servers = servers

    def __enter__(self) -> Phase:
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.ours0 = self._ours()
        print(f"bench: {self.name} …", flush=True)
        return self

    def _ours(self) -> float:
        return sum(s.cpu() for s in self.servers.values()) + self_cpu()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.t0
        others = (machine_busy() - self.busy0) - (self._ours() - self.ours0)
        self.seconds = elapsed
        self.others_cores = max(0.0, others / elapsed) if elapsed > 0 else 0.0
        print(
            f"bench:   {self.name} took {elapsed:.0f}s; other processes used "
            f"{self.others_cores:.2f} of {os.cpu_count()} cores meanwhile",
            flush=True,
        )


# --- scenarios ----------------------------------------------------------------


def scenario_ttfb(
    servers: dict[str, Server], sim: Sim, n_rounds: int, per_round: int
) -> dict[str, Any]:
    """Sequential one-chunk streams on new connections: send to first body byte."""
    sim.set(first_token_delay=0, interval=0, chunks=None)
    samples: dict[str, list[float]] = {t: [] for t in TARGETS}
    failures = collections.Counter[str]()
    cpu = collections.Counter[str]()
    for _, order in rounds(n_rounds):
        for target in order:
            sim.wait_idle()
            pids = servers[target].pids
            cpu0 = cpu_seconds(pids)
            for _ in range(per_round):
                r = load.one_stream(servers[target].port, 1, timeout=10)
                if r.complete:
                    samples[target].append(r.t_first - r.t_send)
                else:
                    failures[target] += 1
            time.sleep(0.02)
            cpu[target] += cpu_seconds(pids) - cpu0
    out: dict[str, Any] = {}
    for t in TARGETS:
        ms = [s * 1000 for s in samples[t]]
        out[t] = {
            "n": len(ms),
            "failed": failures[t],
            "median_ms": statistics.median(ms) if ms else math.nan,
            "p99_ms": pct(ms, 99),
            "server_us_per_request": cpu[t] / (n_rounds * per_round) * 1e6,
        }
    for t in TARGETS:
        out[t]["added_median_ms"] = out[t]["median_ms"] - out["direct"]["median_ms"]
        out[t]["added_p99_ms"] = out[t]["p99_ms"] - out["direct"]["p99_ms"]
    return out


def scenario_throughput(
    servers: dict[str, Server], sim: Sim, n_rounds: int, chunks: int
) -> dict[str, Any]:
    """One long stream as fast as the simulator sends it; CPU from /proc."""
    sim.set(first_token_delay=0, interval=0, chunks=chunks)
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
    for _, order in rounds(n_rounds):
        for target in order:
            sim.wait_idle()
            server = servers[target]
            pids = server.pids
            (u0, k0), sim0, me0 = cpu_times(pids), sim.server.cpu(), self_cpu()
            r = load.one_stream(server.port, chunks, timeout=120)
            time.sleep(0.05)  # let the server finish its bookkeeping
            (u1, k1), sim1, me1 = cpu_times(pids), sim.server.cpu(), self_cpu()
            elapsed = r.t_last - r.t_first
            runs[target].append(
                {
                    "lines": r.lines,
                    "complete": r.complete,
                    "chunks_per_s": (r.lines - 1) / elapsed
                    if elapsed > 0
                    else math.nan,
                    "server_cpu_s": (u1 - u0) + (k1 - k0),
                    "server_sys_s": k1 - k0,
                    "sim_cpu_s": sim1 - sim0,
                    "client_cpu_s": me1 - me0,
                    "seconds": elapsed,
                }
            )
    out: dict[str, Any] = {}
    for t in TARGETS:
        rs = runs[t]
        lines = sum(r["lines"] for r in rs)
        seconds = sum(r["seconds"] for r in rs)
        out[t] = {
            "runs": rs,
            "complete": all(r["complete"] for r in rs),
            "chunks_per_s": statistics.median(r["chunks_per_s"] for r in rs),
            "server_us_per_chunk": sum(r["server_cpu_s"] for r in rs) / lines * 1e6,
            "server_sys_share": sum(r["server_sys_s"] for r in rs)
            / max(1e-9, sum(r["server_cpu_s"] for r in rs)),
            "sim_cores": sum(r["sim_cpu_s"] for r in rs) / seconds,
            "client_cores": sum(r["client_cpu_s"] for r in rs) / seconds,
        }
    return out


def answers(server: Server) -> bool:
    try:
        return load.one_stream(server.port, 1, timeout=5).complete
    except OSError:
        return False


def scenario_concurrency(
    servers: dict[str, Server],
    sim: Sim,
    fleet: Fleet,
    levels: list[int],
    n_rounds: int,
    chunks: int,
    ramp: float,
) -> dict[str, Any]:
    """N streams at 20 chunks/s each, started over `ramp` seconds, read by one loop."""
    sim.set(first_token_delay=0, interval=INTERVAL, chunks=chunks)
    idle: dict[str, int] = {}
    for t in TARGETS:
        sim.wait_idle()
        time.sleep(0.2)
        idle[t] = servers[t].rss()
    stream_s = chunks * INTERVAL
    out: dict[str, Any] = {"idle_rss_kib": idle, "levels": {}}
    for n in levels:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        pooled: dict[str, dict[str, list[float]]] = {
            t: {"ttfb": [], "gaps": []} for t in TARGETS
        }
        for _, order in rounds(n_rounds):
            for target in order:
                if not sim.wait_idle(30):
                    print(
                        f"bench:   warning: upstream streams still open before {target}"
                    )
                server = servers[target]
                pids = server.pids

                def sample(open_streams: int, pids: list[int] = pids) -> dict[str, int]:
                    return {"rss_kib": rss_kib(pids), "open": open_streams}

                (u0, k0), sim0, me0 = cpu_times(pids), sim.server.cpu(), self_cpu()
                res = load.many_streams(
                    server.port,
                    n,
                    chunks,
                    ramp,
                    deadline_s=ramp + stream_s * 2 + 10,
                    sample_at=ramp + min(2.0, stream_s / 2),
                    sampler=sample,
                )
                time.sleep(0.05)
                (u1, k1), sim1, me1 = cpu_times(pids), sim.server.cpu(), self_cpu()
                cpu0, cpu1 = u0 + k0, u1 + k1
                responses = res["responses"]
                ttfb = [r.t_first - r.t_send for r in responses if r.t_first]
                lines = sum(r.lines for r in responses)
                statuses = collections.Counter(r.status for r in responses)
                errors = collections.Counter(r.error[:60] for r in responses if r.error)
                smp = res["sample"] or {"rss_kib": 0, "open": 0}
                per_stream = (
                    (smp["rss_kib"] - idle[target]) / smp["open"]
                    if smp["open"]
                    else math.nan
                )
                pooled[target]["ttfb"] += ttfb
                pooled[target]["gaps"] += res["gaps"]
                wedged = target != "direct" and not answers(server)
                if wedged:
                    # A relay that no longer answers would spoil every later run:
                    # note it, start it afresh and take its idle memory again.
                    print(
                        f"bench:   {target} stopped answering after {n} streams; "
                        "restarting it",
                        flush=True,
                    )
                    fleet.restart(server)
                    wait_ready({target: server})
                    sim.wait_idle(30)
                    time.sleep(0.2)
                    idle[target] = server.rss()
                runs[target].append(
                    {
                        "wedged": wedged,
                        "completed": sum(r.complete for r in responses),
                        "statuses": {str(k): v for k, v in statuses.items()},
                        "errors": dict(errors.most_common(3)),
                        "connect_errors": res["connect_errors"],
                        "lines": lines,
                        "elapsed_s": res["elapsed"],
                        "ttfb_p50_ms": pct(ttfb, 50) * 1000,
                        "ttfb_p99_ms": pct(ttfb, 99) * 1000,
                        "gap_p50_ms": pct(res["gaps"], 50) * 1000,
                        "gap_p99_ms": pct(res["gaps"], 99) * 1000,
                        "rss_open_kib": smp["rss_kib"],
                        "open_at_sample": smp["open"],
                        "kib_per_stream": per_stream,
                        "server_cpu_s": cpu1 - cpu0,
                        "server_sys_s": k1 - k0,
                        "server_us_per_chunk": (cpu1 - cpu0) / lines * 1e6
                        if lines
                        else math.nan,
                        "sim_cores": (sim1 - sim0) / res["elapsed"],
                        "client_cores": (me1 - me0) / res["elapsed"],
                    }
                )
        level: dict[str, Any] = {}
        for t in TARGETS:
            rs = runs[t]
            level[t] = {
                "runs": rs,
                "wedged": sum(r["wedged"] for r in rs),
                "completed_min": min(r["completed"] for r in rs),
                "ttfb_p50_ms": pct(pooled[t]["ttfb"], 50) * 1000,
                "ttfb_p99_ms": pct(pooled[t]["ttfb"], 99) * 1000,
                "gap_p50_ms": pct(pooled[t]["gaps"], 50) * 1000,
                "gap_p99_ms": pct(pooled[t]["gaps"], 99) * 1000,
                "kib_per_stream": statistics.median(r["kib_per_stream"] for r in rs),
                "server_us_per_chunk": sum(r["server_cpu_s"] for r in rs)
                / max(1, sum(r["lines"] for r in rs))
                * 1e6,
                "server_sys_share": sum(r["server_sys_s"] for r in rs)
                / max(1e-9, sum(r["server_cpu_s"] for r in rs)),
                "sim_cores": max(r["sim_cores"] for r in rs),
                "client_cores": max(r["client_cores"] for r in rs),
            }
        out["levels"][str(n)] = level
        print(
            f"bench:   {n} streams: "
            + ", ".join(
                f"{t} {level[t]['completed_min']}/{n} gap p99 "
                f"{level[t]['gap_p99_ms']:.0f} ms"
                for t in TARGETS
            ),
            flush=True,
        )
    return out


def scenario_resumable(
    servers: dict[str, Server],
    sim: Sim,
    n_rounds: int,
    long_chunks: int,
    n_streams: int,
    stream_chunks: int,
) -> dict[str, Any]:
    """chatsvc's plain streams against ?resumable=1 ones: server CPU per chunk.

    The server's CPU includes the embedded store's (it runs in chatsvc's session),
    so the recording's whole cost is counted: the recorder's XADDs, the readers'
    XREADs and the store's own work.
    """
    server = servers["chatsvc"]
    paths = {"plain": "/api/chat", "resumable": "/api/chat?resumable=1"}
    cpu = {load_name: collections.Counter[str]() for load_name in ("long", "many")}
    chunks = {load_name: collections.Counter[str]() for load_name in ("long", "many")}
    complete = collections.Counter[str]()
    for i in range(n_rounds):
        order = list(paths) if i % 2 == 0 else list(reversed(paths))
        for mode in order:
            sim.set(first_token_delay=0, interval=0, chunks=long_chunks)
            sim.wait_idle()
            pids = server.pids
            cpu0 = cpu_seconds(pids)
            r = load.one_stream(server.port, long_chunks, 120, path=paths[mode])
            time.sleep(0.05)
            cpu["long"][mode] += cpu_seconds(pids) - cpu0
            chunks["long"][mode] += r.lines
            complete[mode] += r.complete
            sim.set(first_token_delay=0, interval=INTERVAL, chunks=stream_chunks)
            sim.wait_idle()
            cpu0 = cpu_seconds(pids)
            res = load.many_streams(
                server.port,
                n_streams,
                stream_chunks,
                1.0,
                deadline_s=1.0 + stream_chunks * INTERVAL * 2 + 10,
                path=paths[mode],
            )
            time.sleep(0.05)
            cpu["many"][mode] += cpu_seconds(pids) - cpu0
            chunks["many"][mode] += sum(x.lines for x in res["responses"])
            complete[mode] += sum(x.complete for x in res["responses"])
    out: dict[str, Any] = {"streams": n_streams, "rounds": n_rounds}
    for load_name in ("long", "many"):
        us = {
            mode: cpu[load_name][mode] / max(1, chunks[load_name][mode]) * 1e6
            for mode in paths
        }
        out[load_name] = {**us, "ratio": us["resumable"] / us["plain"]}
    out["complete"] = dict(complete)
    out["expected_complete"] = n_rounds * (1 + n_streams)
    print(
        "bench:   server CPU per chunk, plain / resumable: "
        + ", ".join(
            f"{name} {out[name]['plain']:.0f} / {out[name]['resumable']:.0f} µs "
            f"(×{out[name]['ratio']:.2f})"
            for name in ("long", "many")
        ),
        flush=True,
    )
    return out


def scenario_cancel(
    servers: dict[str, Server],
    sim: Sim,
    n_rounds: int,
    silent: bool,
    rng: random.Random,
) -> dict[str, Any]:
    """Client hang-up to upstream hang-up, from the simulator's own record.

    The simulator stamps each hang-up with its monotonic clock, the same clock as
    ours, so the latency does not depend on how often we poll it. A target that
    never hangs up lets the upstream run to its end, which is recorded as such.
    """
    if silent:
        # Hang up 3 s into a 10 s silence: after chatsvc has committed its 200
        # and sent a keep-alive, long before the first token.
        chunks = 20
        sim.set(first_token_delay=SILENCE, interval=INTERVAL, chunks=chunks)
        lines, wait, phase = 10**9, 3.0, 0.2
        stream_s = SILENCE + chunks * INTERVAL
    else:
        chunks = 100
        sim.set(first_token_delay=0, interval=INTERVAL, chunks=chunks)
        lines, wait, phase = 5, 3.0, INTERVAL
        stream_s = chunks * INTERVAL
    samples: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for _, order in rounds(n_rounds):
        for target in order:
            if not sim.wait_idle(stream_s + 5):
                print(f"bench:   warning: upstream streams still open before {target}")
            before = len(sim.stats()["hangups"])
            at = load.hang_up_after(servers[target].port, lines, wait, phase, rng)
            sample: dict[str, Any] = {"latency_ms": None, "ran_to_end": False}
            deadline = time.monotonic() + stream_s + 3
            while time.monotonic() < deadline:
                stats = sim.stats()
                if len(stats["hangups"]) > before:
                    hangup = stats["hangups"][before]
                    sample["latency_ms"] = (hangup["at"] - at) * 1000
                    sample["chunks_sent"] = hangup["chunks_sent"]
                    break
                if stats["streams_open"] == 0:
                    sample["ran_to_end"] = True
                    break
                time.sleep(0.02)
            samples[target].append(sample)
    out: dict[str, Any] = {"chunks": chunks, "stream_s": stream_s}
    for t in TARGETS:
        seen = [s["latency_ms"] for s in samples[t] if s["latency_ms"] is not None]
        out[t] = {
            "samples": samples[t],
            "never": sum(s["ran_to_end"] for s in samples[t]),
            "missed": sum(s["latency_ms"] is None for s in samples[t]),
            "median_ms": statistics.median(seen) if seen else math.nan,
            "max_ms": max(seen) if seen else math.nan,
        }
    return out


# --- profile ------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*)\)$")


def profile(
    servers: dict[str, Server],
    sim: Sim,
    chunks_per_s: float,
    seconds: float,
    outdir: Path,
) -> dict[str, Any]:
    """py-spy on chatsvc's workers, sampling the thread that holds the GIL.

    --gil keeps only samples of Python code running (a thread blocked in a read,
    a queue wait or epoll holds no GIL), so the shares are shares of chatsvc's
    Python time; the kernel's share (system CPU) comes from /proc alongside.
    Three loads: one long stream flat out (the per-chunk path with reads that
    carry many chunks), 500 streams at 20 chunks/s (one chunk per read and
    per wake-up) and one-chunk requests back to back (the per-request path).
    """
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    server = servers["chatsvc"]
    port = server.port
    n_long = max(1000, min(500_000, int(chunks_per_s * seconds)))
    flowing = int(seconds / INTERVAL)

    def requests() -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            load.one_stream(port, 1, timeout=10)
            n += 1
        return n

    loads: dict[str, tuple[dict[str, Any], Callable[[], int]]] = {
        "long_stream": (
            {"interval": 0, "chunks": n_long},
            lambda: load.one_stream(port, n_long, timeout=seconds + 60).lines,
        ),
        "500_streams": (
            {"interval": INTERVAL, "chunks": flowing},
            lambda: sum(
                r.lines
                for r in load.many_streams(
                    port,
                    500,
                    flowing,
                    0.5,
                    deadline_s=seconds * 2 + 10,
                )["responses"]
            ),
        ),
        "requests": ({"interval": 0, "chunks": None}, requests),
    }
    results: dict[str, Any] = {}
    for name, (settings, run) in loads.items():
        sim.set(first_token_delay=0, **settings)
        sim.wait_idle()
        raw = outdir / f"profile-{name}.txt"
        raw.unlink(missing_ok=True)
        spy = subprocess.Popen(
            [
                str(pyspy),
                "record",
                "--pid",
                str(server.proc.pid),
                "--subprocesses",
                "--gil",
                "--rate",
                "200",
                "--nonblocking",
                "--nolineno",
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        err = b""
        try:
            time.sleep(1.0)  # attaching takes a moment
            pids = server.pids
            (u0, k0) = cpu_times(pids)
            units = run()
            (u1, k1) = cpu_times(pids)
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            _, err = spy.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if not raw.exists():
            results[name] = {"error": err.decode(errors="replace")[-500:]}
            continue
        summary = summarize_profile(raw.read_text())
        summary["unit"] = "request" if name == "requests" else "chunk"
        summary["units"] = units
        summary["us_per_unit"] = ((u1 - u0) + (k1 - k0)) / max(1, units) * 1e6
        summary["sys_share"] = (k1 - k0) / max(1e-9, (u1 - u0) + (k1 - k0))
        results[name] = summary
    return results


def summarize_profile(text: str) -> dict[str, Any]:
    """Self and inclusive shares per function, and shares per thread role."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            if m and (".py" in m["file"] or m["file"].startswith("<")):
                frames.append(f"{m['func']} ({m['file']})")
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        joined = ";".join(frames)
        if "_Bodies._run (chatsvc/upstream.py)" in joined:
            role = "body reader (read, parse, frame, write to the client)"
        elif "_pump (chatsvc/upstream.py)" in joined:
            role = "pump threads (upstream request, headers, first chunk)"
        elif "handle (" in joined:
            role = "request threads (Flask view, first chunk, heartbeats, end)"
        elif "_HangupWatcher._run (chatsvc/upstream.py)" in joined:
            role = "hang-up watcher"
        else:
            role = "worker main loops and other"
        roles[role] += count

    def top(counter: collections.Counter[str], n: int) -> list[list[Any]]:
        return [[k, v / total] for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "roles": top(roles, 10),
        "self": top(self_time, 20),
        "inclusive": top(inclusive, 30),
    }


# --- report -------------------------------------------------------------------


def versions() -> dict[str, str]:
    names = (
        "gunicorn",
        "flask",
        "werkzeug",
        "ollama",
        "httpx",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "py-spy",
    )
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "loadavg_at_start": os.getloadavg(),
    }


def revision() -> str:
    """The checked-out commit, read from .git without running git."""
    try:
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = ROOT / ".git" / head[5:]
            return ref.read_text().strip()[:12] if ref.exists() else head[5:]
        return head[:12]
    except OSError:
        return "?"


def code_digest() -> str:
    """A digest of the code measured: the working tree may differ from HEAD."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "chatsvc").glob("*.py")) + [
        ROOT / "gunicorn.conf.py",
        ROOT / "wsgi.py",
    ]
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _num(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(x: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(x):
        return ""
    return f" (×{x / base:.2f})"


def table(res: dict[str, Any]) -> list[list[str]]:
    """Rows of the one table: a label, then one cell per target."""
    rows: list[list[str]] = [["", *(TITLES[t] for t in TARGETS)]]

    def row(label: str, cell: Callable[[str], str]) -> None:
        rows.append([label, *(cell(t) for t in TARGETS)])

    if "ttfb" in res:
        tt = res["ttfb"]
        row(
            f"1. TTFB median, ms (n={tt['direct']['n']} each)",
            lambda t: (
                _num(tt[t]["median_ms"], 2)
                + _ratio(tt[t]["median_ms"], tt["direct"]["median_ms"])
            ),
        )
        row("   TTFB p99, ms", lambda t: _num(tt[t]["p99_ms"], 2))
        row(
            "   TTFB added over direct, median / p99, ms",
            lambda t: (
                "–"
                if t == "direct"
                else f"+{_num(tt[t]['added_median_ms'], 2)} / "
                f"+{_num(tt[t]['added_p99_ms'], 2)}"
            ),
        )
        row(
            "   server CPU per one-chunk request, µs",
            lambda t: _num(tt[t]["server_us_per_request"], 0),
        )
    if "throughput" in res:
        th = res["throughput"]
        row(
            f"2. one long stream ({res['settings']['throughput_chunks']:,} chunks), "
            "chunks/s",
            lambda t: (
                _num(th[t]["chunks_per_s"])
                + _ratio(th[t]["chunks_per_s"], th["direct"]["chunks_per_s"])
            ),
        )
        row(
            "   server CPU per 1,000 chunks, ms (direct: the simulator's)",
            lambda t: _num(th[t]["server_us_per_chunk"], 1),
        )
    for n, level in res.get("concurrency", {}).get("levels", {}).items():
        d = level["direct"]
        row(
            f"3. {n} streams × 20 chunks/s: completed (worst run)",
            lambda t, n=n, level=level: (
                f"{level[t]['completed_min']}/{n}"
                + (" (then hung)" if level[t]["wedged"] else "")
            ),
        )
        row(
            f"   {n} streams: TTFB p50 / p99, ms",
            lambda t, level=level: (
                f"{_num(level[t]['ttfb_p50_ms'])} / {_num(level[t]['ttfb_p99_ms'])}"
            ),
        )
        row(
            f"   {n} streams: gap p50 / p99, ms (upstream: 50)",
            lambda t, level=level, d=d: (
                f"{_num(level[t]['gap_p50_ms'])} / "
                f"{_num(level[t]['gap_p99_ms'])}"
                + _ratio(level[t]["gap_p99_ms"], d["gap_p99_ms"])
            ),
        )
        row(
            f"   {n} streams: server KiB per open stream",
            lambda t, level=level: _num(level[t]["kib_per_stream"], 0),
        )
        row(
            f"   {n} streams: server CPU µs per chunk",
            lambda t, level=level: _num(level[t]["server_us_per_chunk"], 1),
        )
    for key, label in (
        ("cancel_flowing", "4. cancel while flowing (50 ms chunks)"),
        ("cancel_silence", "   cancel in a 10 s first-token silence"),
    ):
        if key not in res:
            continue
        c = res[key]

        def cell(t: str, c: dict[str, Any] = c) -> str:
            total, never = len(c[t]["samples"]), c[t]["never"]
            if never == total:
                return "never (ran to its end)"
            if c[t]["missed"] == total:
                return "not seen"
            text = f"{_num(c[t]['median_ms'], 1)} / {_num(c[t]['max_ms'], 1)}"
            return text + (f" ({never} of {total} never)" if never else "")

        row(f"{label}: hang-up → upstream hang-up, median / max, ms", cell)
    if "resumable" in res:
        rows += resumable_rows(res)
    return rows


def resumable_rows(res: dict[str, Any]) -> list[list[str]]:
    """The resumable scenario's rows: chatsvc's column only."""
    rs = res["resumable"]
    rows = []
    for name, label in (
        ("long", "one long stream flat out"),
        ("many", f"{rs['streams']} streams at 20 chunks/s"),
    ):
        cell = (
            f"{rs[name]['plain']:.0f} / {rs[name]['resumable']:.0f} "
            f"(×{rs[name]['ratio']:.2f})"
        )
        rows.append(
            [f"   {label}: plain / resumable, µs per chunk", "–", cell, "–", "–"]
        )
    title = "5. ?resumable=1 (chatsvc + its store), server CPU"
    return [[title, "", "", "", ""], *rows]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if k == 0:
            lines.append(
                "|"
                + "|".join(
                    "-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(lines)


def notes(res: dict[str, Any]) -> list[str]:
    out = []
    runs = list(res.get("concurrency", {}).get("levels", {}).values())
    if "throughput" in res:
        runs.append(res["throughput"])
    if runs:
        sim_max = max(lv[t]["sim_cores"] for lv in runs for t in TARGETS)
        client_max = max(lv[t]["client_cores"] for lv in runs for t in TARGETS)
        flat = res.get("throughput", {}).get("direct", {}).get("server_us_per_chunk")
        out.append(
            (
                f"Simulator CPU: {flat:.1f} µs per chunk streaming flat out; "
                if flat
                else "Simulator CPU: "
            )
            + f"at most {sim_max:.2f} cores in any run. Load client: at most "
            f"{client_max:.2f} cores."
        )
    busy = ", ".join(f"{k} {v:.2f}" for k, v in res["other_load_cores"].items())
    out.append(
        "Other processes' CPU during each scenario, in cores of "
        f"{res['machine']['cores']}: {busy} (noise check)."
    )
    return out


def header(res: dict[str, Any]) -> str:
    m, v = res["machine"], res["versions"]
    return (
        f"{res['date']} · chatsvc {res['revision']} (code {res['code']}) · "
        f"{m['cores']} cores, {m['cpu']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']} · Python {v['python']}, "
        f"gunicorn {v['gunicorn']}, Flask {v['flask']}, ollama {v['ollama']}, "
        f"httpx {v['httpx']}, FastAPI {v['fastapi']}, Starlette {v['starlette']}, "
        f"uvicorn {v['uvicorn']} (uvloop {v['uvloop']}, httptools {v['httptools']})"
    )


def profile_text(prof: dict[str, Any]) -> str:
    lines = []
    for name, p in prof.items():
        if "error" in p:
            lines.append(f"profile {name}: py-spy failed: {p['error']}")
            continue
        per, unit = p["us_per_unit"], p["unit"]
        python = per * (1 - p["sys_share"])
        lines.append(
            f"chatsvc, {name}: {per:.1f} µs of server CPU per {unit} "
            f"({p['sys_share'] * 100:.0f}% of it in the kernel); "
            f"{p['samples']} GIL samples share the {python:.1f} µs of Python:"
        )
        for role, share in p["roles"]:
            lines.append(f"  {share * 100:5.1f}%  {role}")
        lines.append("  self time (leaf function):")
        for func, share in p["self"][:12]:
            lines.append(f"  {share * 100:5.1f}%  {share * python:6.1f} µs  {func}")
        lines.append("  inclusive:")
        shown = 0
        for func, share in p["inclusive"]:
            if re.search(
                r"\((chatsvc|ollama|httpx|httpcore|h11|gunicorn|flask|werkzeug|"
                r"prometheus_client|logging|json|queue|concurrent)/",
                func,
            ):
                lines.append(f"  {share * 100:5.1f}%  {share * python:6.1f} µs  {func}")
                shown += 1
            if shown == 18:
                break
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------

load: Any = None  # bench/load.py, imported in main() after the venv check


@contextmanager
def stop_on_signals() -> Iterator[None]:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {
        s: signal.signal(s, interrupt)
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    }
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


SCENARIOS = (
    "ttfb",
    "throughput",
    "concurrency",
    "cancel_flowing",
    "cancel_silence",
    "resumable",
    "profile",
)


def wait_quiet(max_s: float, threshold: float) -> float:
    """Wait (bounded) until other processes use less than threshold cores."""
    deadline = time.monotonic() + max_s
    while True:
        busy0 = machine_busy()
        time.sleep(2.0)
        used = (machine_busy() - busy0) / 2.0
        if used <= threshold or time.monotonic() > deadline:
            return used
        print(
            f"bench: the machine is busy ({used:.2f} cores used by others); waiting",
            flush=True,
        )


def main() -> int:
    global load
    ensure_venv()
    parser = argparse.ArgumentParser(
        description="chatsvc's benchmark against a Flask relay and the FastAPI recipe."
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="run only these scenarios",
    )
    parser.add_argument(
        "--levels", type=int, nargs="+", help="concurrency levels (default 50 200 500)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=120,
        help="wait up to this long for other load to drop first",
    )
    parser.add_argument(
        "--limit-s",
        type=int,
        default=900,
        help="abort (and clean up) after this many seconds",
    )
    args = parser.parse_args()
    only = [s for s in args.only if not (s == "profile" and args.no_profile)]
    ensure_requirements()
    raise_nofile()
    sys.path.insert(0, str(BENCH))
    import load as load_module

    load = load_module
    quick = args.quick
    settings = {
        "ttfb_rounds": 2 if quick else 20,
        "ttfb_per_round": 20 if quick else 50,
        "throughput_rounds": 1 if quick else 3,
        "throughput_chunks": 10_000 if quick else 30_000,
        "levels": [50, 200] if quick else [50, 200, 500],
        "concurrency_rounds": 1 if quick else 2,
        "stream_chunks": 60 if quick else 120,
        "ramp_s": 1.0,
        "cancel_flowing_rounds": 2 if quick else 5,
        "cancel_silence_rounds": 1 if quick else 3,
        "heartbeat_s": HEARTBEAT_S,
        "interval_s": INTERVAL,
        "silence_s": SILENCE,
        "profile_seconds": 4.0 if quick else 6.0,
        "resumable_rounds": 2 if quick else 4,
        "resumable_chunks": 10_000 if quick else 30_000,
        "resumable_streams": 50 if quick else 200,
    }
    if args.levels:
        settings["levels"] = args.levels
    RESULTS.mkdir(exist_ok=True)
    logdir = RESULTS / "logs"
    logdir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    res: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "revision": revision(),
        "code": code_digest(),
        "machine": machine(),
        "versions": versions(),
        "settings": settings,
        "other_load_cores": {},
    }
    if args.quiet_wait_s > 0:
        res["other_load_cores"]["before"] = wait_quiet(args.quiet_wait_s, 0.3)
    metrics_dir = tempfile.mkdtemp(prefix="chatsvc-metrics-bench-")
    fleet = Fleet(logdir)
    signal.alarm(args.limit_s)
    try:
        with stop_on_signals():
            sim_server = start_simulator(fleet)
            servers = start_targets(fleet, sim_server, metrics_dir)
            sim = Sim(sim_server)
            wait_ready(servers)
            print(
                "bench: servers up: "
                + ", ".join(
                    f"{t} :{s.port} (pids {' '.join(map(str, sorted(s.pids)))})"
                    for t, s in servers.items()
                ),
                flush=True,
            )
            for _ in range(10):  # warm both workers of each server
                for t in TARGETS:
                    load.one_stream(servers[t].port, 3, timeout=10)
            rng = random.Random(1)
            jobs: dict[str, Callable[[], Any]] = {
                "ttfb": lambda: scenario_ttfb(
                    servers, sim, settings["ttfb_rounds"], settings["ttfb_per_round"]
                ),
                "throughput": lambda: scenario_throughput(
                    servers,
                    sim,
                    settings["throughput_rounds"],
                    settings["throughput_chunks"],
                ),
                "concurrency": lambda: scenario_concurrency(
                    servers,
                    sim,
                    fleet,
                    settings["levels"],
                    settings["concurrency_rounds"],
                    settings["stream_chunks"],
                    settings["ramp_s"],
                ),
                "cancel_flowing": lambda: scenario_cancel(
                    servers, sim, settings["cancel_flowing_rounds"], False, rng
                ),
                "cancel_silence": lambda: scenario_cancel(
                    servers, sim, settings["cancel_silence_rounds"], True, rng
                ),
                "resumable": lambda: scenario_resumable(
                    servers,
                    sim,
                    settings["resumable_rounds"],
                    settings["resumable_chunks"],
                    settings["resumable_streams"],
                    settings["stream_chunks"],
                ),
                "profile": lambda: profile(
                    servers,
                    sim,
                    res.get("throughput", {})
                    .get("chatsvc", {})
                    .get("chunks_per_s", 10000),
                    settings["profile_seconds"],
                    RESULTS,
                ),
            }
            for name in SCENARIOS:
                if name in only:
                    with Phase(name, servers) as p:
                        res[name] = jobs[name]()
                    res["other_load_cores"][name] = p.others_cores
            res["simulator_total_cpu_s"] = sim_server.cpu()
    finally:
        signal.alarm(0)
        fleet.stop_all()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    res["duration_s"] = time.monotonic() - started

    rows = table(res)
    text = render(rows)
    head = header(res)
    note = notes(res)
    print()
    print(head)
    print()
    print(text)
    for n in note:
        print(n)
    prof_text = ""
    if "profile" in res:
        prof_text = profile_text(res["profile"])
        print()
        print(prof_text)
    res["table"] = rows
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    shutil.copyfile(out, RESULTS / "latest.json")
    (RESULTS / "performance.md").write_text(
        f"{head}\n\n{text}\n\n"
        + "\n".join(note)
        + "\n"
        + (f"\n```\n{prof_text}\n```\n" if prof_text else "")
    )
    print(
        f"\nbench: {res['duration_s']:.0f}s; wrote {out.relative_to(ROOT)}, "
        f"bench/results/latest.json and bench/results/performance.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
