"""Several Ollama hosts: chatsvc against round-robin (nginx) and random choice.

    .venv/bin/python bench/hosts.py [--requests 40] [--seed 11] [--gap 1.0 1.4]

Three simulated hosts (parallel 1, 2 and 1; models as in HOSTS), paced like real
generation, and one arrival trace of chats over two models, replayed against each
target in turn, at each load. Every host is reset between targets. A load is a
mean gap between arrivals (--gap, seconds); the seed fixes the trace's models,
reply lengths and the shape of its gaps, so a longer gap replays the same chats
stretched out in time. A reply takes 2.75 s on average (0.3 s to the first token,
then about 83 tokens at 0.03 s; see trace), and each model has slots in
proportion to its share of the requests (3 of the 4 slots for 3 in 4 requests),
so the hosts are busy about 2.75 / (4 * gap) of the time: a gap of 1.0 s keeps
them busy about 3/4 of the time (0.69), 1.4 s about 1/2 (0.49). The default run
replays both, one table each. Printed: total completion time, queue-wait
p50/p99 (time to the first token minus the host's own first-token delay: time
spent waiting for a slot, in chatsvc's queue or silently inside Ollama), the
highest in-flight count each host saw against its parallel,
the most requests waiting silently inside a host, and requests sent to a host
without the model (they get its 404). The wait percentiles count only requests
that got a first token; "p99 s, every request" counts a failed request as never
served (infinite wait), so that a target cannot lower its wait by failing
requests. Results: bench/results/hosts.json and bench/results/hosts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
# name: (parallel, models)
# One model per host: Ollama's OLLAMA_NUM_PARALLEL (and the simulator's
# --parallel) counts per loaded model, so a host with two models would run more
# than its parallel for the peers and not for chatsvc.
HOSTS = {
    "h1": (1, ["qwen3"]),
    "h2": (2, ["llama3.2"]),
    "h3": (1, ["llama3.2"]),
}
# Requests per model follow the slots there are for each: 3 to 1.
MODELS = ["llama3.2", "llama3.2", "llama3.2", "qwen3"]
FIRST_TOKEN_S = 0.3
INTERVAL_S = 0.03  # about 33 tokens per second
CHUNKS = 400  # the longest reply; each request asks for fewer (num_predict)
# Mean gaps between arrivals, from a mean reply of 2.75 s over 4 slots (see the
# docstring): the hosts busy about 3/4 of the time, then about 1/2.
GAP_S = 1.0
MODERATE_GAP_S = 1.4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ok(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def process(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def trace(n: int, seed: int, gap: float) -> list[tuple[float, str, int]]:
    """(seconds after the start, model, reply tokens): Poisson arrivals `gap`
    seconds apart on average, two models mixed, reply lengths log-normal as chat
    replies are (median 60, mean about 83)."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(n):
        tokens = min(CHUNKS, max(5, round(rng.lognormvariate(4.1, 0.8))))
        out.append((at, rng.choice(MODELS), tokens))
        at += rng.expovariate(1 / gap)
    return out


def one(url: str, model: str, tokens: int, i: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"question {i}"}],
        "options": {"num_predict": tokens},
    }
    sent = time.monotonic()
    first = None
    ok = False
    with requests.post(f"{url}/api/chat", json=body, stream=True, timeout=600) as r:
        status = r.status_code
        for line in r.iter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                break
            message = chunk.get("message") or {}
            if first is None and (message.get("content") or message.get("thinking")):
                first = time.monotonic()
            if chunk.get("done"):
                ok = True
    end = time.monotonic()
    wait = None if first is None else max(0.0, first - sent - FIRST_TOKEN_S)
    return {"status": status, "ok": ok, "sent": sent, "end": end, "wait": wait}


def replay(
    url: str, sims: dict[str, str], arrivals: list[tuple[float, str, int]]
) -> dict[str, Any]:
    for sim in sims.values():
        requests.post(f"{sim}/_sim/reset", timeout=5)
    results: list[dict[str, Any]] = [{} for _ in arrivals]
    most_waiting = dict.fromkeys(sims, 0)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for name, sim in sims.items():
                waiting = requests.get(f"{sim}/_sim/stats", timeout=5).json()["waiting"]
                most_waiting[name] = max(most_waiting[name], waiting)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()

    def run(i: int, at: float, model: str, tokens: int) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        try:
            results[i] = one(url, model, tokens, i)
        except (requests.RequestException, ValueError) as exc:
            results[i] = {"status": 0, "ok": False, "error": str(exc), "wait": None}

    threads = [
        threading.Thread(target=run, args=(i, *arrival))
        for i, arrival in enumerate(arrivals)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    ends = [r["end"] for r in results if "end" in r]
    waits = sorted(r["wait"] for r in results if r["wait"] is not None)
    # A failed request was never served: its wait has no end.
    every = sorted(r["wait"] if r["ok"] else float("inf") for r in results)
    stats = {
        name: requests.get(f"{sim}/_sim/stats", timeout=5).json()
        for name, sim in sims.items()
    }
    return {
        "total_s": round(max(ends) - start, 2),
        "completed": sum(1 for r in results if r["ok"]),
        "wait_p50_s": round(statistics.median(waits), 2) if waits else None,
        "wait_p99_s": round(p99(waits), 2) if waits else None,
        # JSON has no infinity: null when more than 1 % of the requests failed.
        "wait_p99_every_request_s": None
        if p99(every) == float("inf")
        else round(p99(every), 2),
        "max_in_flight": {n: stats[n]["max_in_flight"] for n in sims},
        "max_waiting_in_host": most_waiting,
        # A request that reached a host without its model got a 404 there: the
        # client saw it, or the proxy sent the request again (one more arrival
        # at the hosts than the trace has).
        "to_host_without_model": sum(1 for r in results if r["status"] == 404)
        + sum(stats[n]["requests"] for n in sims)
        - len(arrivals),
    }


def p99(values: list[float]) -> float:
    """Of sorted values; with 40 of them, the largest."""
    return values[min(len(values) - 1, int(len(values) * 0.99))]


NGINX = """daemon off; worker_processes 1;
pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream ollama {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://ollama; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 600s;
      {retry}
    }}
  }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--gap", type=float, nargs="+", default=[GAP_S, MODERATE_GAP_S],
        help="mean seconds between arrivals, one table per value "
        f"(default: {GAP_S}, then {MODERATE_GAP_S})",
    )  # fmt: skip
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="chatsvc-bench-hosts-"))
    ports = {name: free_port() for name in HOSTS}
    sims = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    loads: list[dict[str, Any]] = []
    with ExitStack() as stack:
        for name, (parallel, models) in HOSTS.items():
            stack.enter_context(process(
            [PY, "-m", "chatsvc.simulator", "--port", str(ports[name]),
             "--parallel", str(parallel), "--models", ",".join(models),
             "--first-token-delay", str(FIRST_TOKEN_S), "--interval", str(INTERVAL_S),
             "--chunks", str(CHUNKS)],
            {}, folder / f"{name}.log",
        ))  # fmt: skip
        for sim in sims.values():
            wait_ok(f"{sim}/api/version")
        for gap in args.gap:
            arrivals = trace(args.requests, args.seed, gap)
            loads.append({"gap_s": gap, "results": compare(sims, arrivals, folder)})
    report = {
        "hosts": {n: {"parallel": p, "models": m} for n, (p, m) in HOSTS.items()},
        "requests": args.requests,
        "seed": args.seed,
        "pace": {
            "first_token_s": FIRST_TOKEN_S,
            "interval_s": INTERVAL_S,
            "chunks": CHUNKS,
        },
        "loads": loads,
    }
    (RESULTS / "hosts.json").write_text(json.dumps(report, indent=2) + "\n")
    tables = "\n".join(
        f"Mean gap between arrivals {load['gap_s']} s:\n\n" + markdown(load["results"])
        for load in loads
    )
    (RESULTS / "hosts.md").write_text(tables)
    print(tables)
    shutil.rmtree(folder, ignore_errors=True)


def compare(
    sims: dict[str, str], arrivals: list[tuple[float, str, int]], folder: Path
) -> dict[str, Any]:
    """One trace replayed against each target; its figures by target."""
    figures: dict[str, Any] = {}
    # chatsvc, as README runs it, with each host's parallel.
    port = free_port()
    hosts = ",".join(f"{sims[n]}?parallel={HOSTS[n][0]}" for n in HOSTS)
    env = {"OLLAMA_HOST": hosts, "PORT": str(port), "WEB_CONCURRENCY": "2",
           "CHATSVC_MAX_STREAMS_PER_CLIENT": "256",
           # Models are read once, at start: every request the hosts see
           # during the replay is then a chat.
           "CHATSVC_DISCOVERY_S": "600"}  # fmt: skip
    with process([str(ROOT / "bin" / "run")], env, folder / "chatsvc.log"):
        wait_ok(f"http://127.0.0.1:{port}/readyz")
        time.sleep(1.0)  # the first discovery of every host
        figures["chatsvc"] = replay(f"http://127.0.0.1:{port}", sims, arrivals)
    # Round-robin: the common nginx upstream block, as the recipe is written,
    # and with a 404 passed on to the next host.
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    retry = "proxy_next_upstream error timeout http_404 non_idempotent;"
    for name, extra in (
        ("round-robin (nginx)", ""),
        ("round-robin, 404 to the next host", retry),
    ):
        port = free_port()
        (folder / "nginx.conf").write_text(NGINX.format(
            dir=folder, port=port, retry=extra,
            servers=" ".join(f"server {sim.removeprefix('http://')};"
                             for sim in sims.values()),
        ))  # fmt: skip
        command = [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")]
        with process(command, {}, folder / "nginx.log"):
            wait_ok(f"http://127.0.0.1:{port}/api/version")
            figures[name] = replay(f"http://127.0.0.1:{port}", sims, arrivals)
    # Random choice among the hosts that list the model (Open WebUI).
    port = free_port()
    with process(
        [PY, "-m", "gunicorn", "-k", "gthread", "--threads", "100", "-w", "2",
         "--preload",
         "--bind", f"127.0.0.1:{port}", "ref_random:app"],
        {"OLLAMA_HOSTS": ",".join(sims.values())}, folder / "random.log",
        cwd=ROOT / "bench",
    ):  # fmt: skip
        wait_ok(f"http://127.0.0.1:{port}/models")
        figures["random choice (Open WebUI)"] = replay(
            f"http://127.0.0.1:{port}", sims, arrivals
        )
    return figures


def markdown(figures: dict[str, Any]) -> str:
    parallel = {n: p for n, (p, _) in HOSTS.items()}
    lines = [
        "| target | completed | total s | queue wait p50 s | p99 s | "
        "p99 s, every request | max in flight / parallel (h1, h2, h3) | "
        "most waiting inside a host | sent to a host without the model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        flight = ", ".join(f"{f['max_in_flight'][n]}/{parallel[n]}" for n in HOSTS)
        every = f["wait_p99_every_request_s"]
        lines.append(
            f"| {name} | {f['completed']} | {f['total_s']} | {f['wait_p50_s']} | "
            f"{f['wait_p99_s']} | {'∞' if every is None else every} | {flight} | "
            f"{max(f['max_waiting_in_host'].values())} "
            f"| {f['to_host_without_model']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
