"""python -m chatsvc.simulator: serve the simulator until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import FAULTS, Settings, Simulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m chatsvc.simulator",
        description="Ollama-compatible simulator for demos, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--first-token-delay", type=float, default=Settings.first_token_delay
    )
    parser.add_argument("--interval", type=float, default=Settings.interval)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--fault", choices=FAULTS, default=None)
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="generations in flight per model, as OLLAMA_NUM_PARALLEL (default: any)",
    )
    parser.add_argument(
        "--models", help="comma-separated installed models, newest first"
    )
    parser.add_argument(
        "--load-delay",
        type=float,
        default=Settings.load_delay,
        help="seconds to load a model that is not loaded",
    )
    parser.add_argument(
        "--pull-speed", type=float, default=Settings.pull_speed, help="bytes/s"
    )
    args = parser.parse_args(argv)
    settings = {
        "first_token_delay": args.first_token_delay,
        "interval": args.interval,
        "chunks": args.chunks,
        "fault": args.fault,
        "parallel": args.parallel,
        "load_delay": args.load_delay,
        "pull_speed": args.pull_speed,
    }
    if args.models is not None:
        settings["models"] = [m for m in args.models.split(",") if m]
    try:
        sim = Simulator(args.host, args.port, **settings)
    except ValueError as err:
        parser.error(str(err))
    sim.start()
    # gunicorn.conf.py and bench/run.py read the URL as this line's last word.
    print(f"chatsvc simulator listening on {sim.url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
