"""`python -m chatsvc chat [-m MODEL] [--url URL] PROMPT`: a reply, as it streams.

PROMPT `-` reads it from stdin. The URL defaults to $CHATSVC_URL, else to
http://127.0.0.1:$PORT (8000), like the server; a bare host:port means http.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import requests


class CliError(Exception):
    """Something to print on stderr before exiting 1."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatsvc")
    commands = parser.add_subparsers(dest="command", required=True)
    chat = commands.add_parser("chat", help="stream a reply to PROMPT")
    chat.add_argument("prompt", metavar="PROMPT", help="the prompt, or - for stdin")
    chat.add_argument("-m", "--model", help="default: the first model /api/tags lists")
    chat.add_argument(
        "--url",
        default=os.environ.get("CHATSVC_URL")
        or f"http://127.0.0.1:{os.environ.get('PORT') or 8000}",
        help="default: $CHATSVC_URL, else http://127.0.0.1:$PORT (8000)",
    )
    chat.add_argument(
        "--key",
        default=os.environ.get("CHATSVC_API_KEY"),
        help="API key (default: $CHATSVC_API_KEY)",
    )
    args = parser.parse_args(argv)
    # As the ollama client takes OLLAMA_HOST: no scheme means http.
    url = args.url if "://" in args.url else f"http://{args.url}"
    url = url.rstrip("/")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    session = requests.Session()
    if args.key:
        session.headers["Authorization"] = f"Bearer {args.key}"
    try:
        model = args.model or _first_model(session, url)
        _stream_chat(session, url, model, prompt)
    except BrokenPipeError:
        # The reader left (`| head`): nothing more to say, and nobody to say it
        # to. stdout goes to /dev/null so that the exit's flush stays quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"error: cannot talk to chatsvc at {url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _first_model(session: requests.Session, url: str) -> str:
    models = _checked(session.get(f"{url}/api/tags", timeout=30)).json().get("models")
    if not models:
        raise CliError("the server lists no models; pass one with -m")
    return str(models[0]["name"])


def _stream_chat(session: requests.Session, url: str, model: str, prompt: str) -> None:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    }
    with session.post(
        f"{url}/api/chat",
        json=body,
        stream=True,
        timeout=(10, None),
        headers={"Accept": "application/x-ndjson"},
    ) as response:
        _checked(response)
        # Split on \n only: chatsvc escapes every other line break inside values.
        for line in response.iter_lines(delimiter=b"\n"):
            if not line:
                continue
            part: dict[str, Any] = json.loads(line)
            if "error" in part:
                raise CliError(part["error"])
            sys.stdout.write(part.get("message", {}).get("content", ""))
            sys.stdout.flush()
            if part.get("done"):
                sys.stdout.write("\n")
                return
    raise CliError("the stream ended before the reply was complete")


def _checked(response: requests.Response) -> requests.Response:
    if response.ok:
        return response
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason
    if response.status_code == 401:
        message += "; pass the key with --key or $CHATSVC_API_KEY"
    raise CliError(f"{message} (HTTP {response.status_code})")


if __name__ == "__main__":
    sys.exit(main())
