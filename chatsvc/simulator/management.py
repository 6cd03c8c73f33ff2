"""Model management as Ollama streams it: pull, push and create progress (§9)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import catalog

MODELS_DIR = "/root/.ollama/models"
BLOB_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Step:
    """One progress line, written after waiting; an error line ends the stream.

    An error that comes before any line gets a real status (gin's streamResponse);
    after the first line it is an in-band {"error"} line on a 200.
    """

    wait: float
    line: dict[str, Any]
    status: int = 500
    drop: bool = False  # cut the connection here instead


def progress(status: str, digest: str = "", total: int = 0, done: int = 0) -> Step:
    line: dict[str, Any] = {"status": status}
    line.update((k, v) for k, v in (("digest", digest), ("total", total)) if v)
    if done:  # Go omits the zero values
        line["completed"] = done
    return Step(0.0, line)


def _paced(step: Step, tick: float) -> Step:
    return Step(tick, step.line, step.status)


def faulty(
    steps: Iterator[Step], fault: str | None, after: int, message: str
) -> Iterator[Step]:
    """A pull under one of the simulator's faults (the network's, for a pull)."""
    if fault == "error_before":
        yield Step(0.0, {"error": message})
        return
    for count, step in enumerate(steps):
        if fault in ("error_after", "error_first_line", "drop_after") and count == (
            0 if fault == "error_first_line" else after
        ):
            yield Step(step.wait, {"error": message}, drop=fault == "drop_after")
            return
        if fault == "cut_before_done" and step.line.get("status") == "success":
            return
        yield step


def pull(
    name: str, have: bool, speed: float, tick: float, install: Callable[[], None]
) -> Iterator[Step]:
    """PullModel: manifest, each layer's download, verify, write, success."""
    yield progress("pulling manifest")
    spec = catalog.REGISTRY.get(catalog.base(name))
    if spec is None:
        yield Step(tick, {"error": "pull model manifest: file does not exist"})
        return
    for digest, size in catalog.layers(name, spec):
        status = f"pulling {digest[:12]}"
        if have:  # already on disk: one line at 100 %
            yield _paced(progress(status, "sha256:" + digest, size, size), tick)
            continue
        got = 0
        # Reported every tick while the download runs; no final 100 % line.
        while got < size:
            yield _paced(progress(status, "sha256:" + digest, size, got), tick)
            got += max(1, int(speed * tick))
    yield _paced(progress("verifying sha256 digest"), tick)
    yield _paced(progress("writing manifest"), tick)
    install()
    yield _paced(progress("success"), tick)


def push(name: str, installed: bool, tick: float) -> Iterator[Step]:
    """PushModel without registry access: the manifest, then the first upload fails."""
    yield progress("retrieving manifest")
    full = catalog.canonical(name)
    model, _, tag = full.partition(":")
    path = model if "/" in model else "library/" + model
    if not installed:
        host = "" if model.count("/") > 1 else "registry.ollama.ai/"
        missing = f"open {MODELS_DIR}/manifests/{host}{path}/{tag}"
        yield _paced(progress("couldn't retrieve manifest"), tick)
        yield Step(0.0, {"error": f"{missing}: no such file or directory"})
        return
    digest = catalog.digest(name)
    url = f"https://registry.ollama.ai/v2/{path}/blobs/sha256:{digest}"
    error = f'Head "{url}": dial tcp: lookup registry.ollama.ai: no such host'
    yield Step(tick, {"error": error})


def create(
    body: dict[str, Any],
    find: Callable[[str], str | None],
    blob: Callable[[str], bytes | None],
    tick: float,
    speed: float,
    install: Callable[[str], None],
) -> Iterator[Step]:
    """CreateHandler's goroutine: from a model (pulled first if need be) or files.

    install(spec_of) adds the model; blob(digest) is a blob's first bytes or None.
    """
    source, files = body.get("from") or "", body.get("files")
    new_layers = [k for k in ("template", "system", "license") if body.get(k)]
    if source:
        if not catalog.valid(source):
            yield Step(0.0, {"error": "invalid model name"}, 400)
            return
        if find(source) is None:
            pulled: list[bool] = []
            yield from pull(source, False, speed, tick, lambda: pulled.append(True))
            if not pulled:
                return
        spec = catalog.REGISTRY.get(catalog.base(source), catalog.REGISTRY["llama3.2"])
        used = [d for d, _ in catalog.layers(source, spec)[:-1]]
        spec_of = source
    elif isinstance(files, dict) and files:
        for digest in files.values():  # the type is read before the first line
            head = blob(digest)
            if head is None:
                path = f"{MODELS_DIR}/blobs/{digest.replace(':', '-')}"
                yield Step(0.0, {"error": f"open {path}: no such file or directory"})
                return
            if not head.startswith(b"GGUF"):
                yield Step(0.0, {"error": "unknown type"}, 400)
                return
        yield progress("parsing GGUF")
        used = [d.partition(":")[2] for d in files.values()]
        spec_of = ""
    else:
        yield Step(0.0, {"error": "neither 'from' or 'files' was specified"}, 400)
        return
    for digest in used:
        yield _paced(progress(f"using existing layer sha256:{digest}"), tick)
    name = str(body.get("model") or body.get("name"))
    for kind in new_layers:
        created = catalog.digest(name, kind)
        yield _paced(progress(f"creating new layer sha256:{created}"), tick)
    yield _paced(progress("writing manifest"), tick)
    install(spec_of)
    yield _paced(progress("success"), tick)
