"""The chat page in a real browser (Debian's chromium, playwright) against gunicorn."""

from __future__ import annotations

import json
import os
import re
import signal
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    expect,
    sync_playwright,
)

from chatsvc.simulator import Simulator

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# The strictest policy the page is meant to work under: every test runs with it,
# so an inline script, inline handler or inline style would show up as a failure.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
XSS = "<img src=x onerror=alert(1)> <script>alert(2)</script>"
STORED_CHATS = """() => Object.keys(localStorage)
    .filter(k => k.startsWith('chatsvc.chat.'))
    .map(k => JSON.parse(localStorage.getItem(k)))"""
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: bin/test installs it (apt-get install -y chromium)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """new_context(**options): a fresh context (own localStorage), closed after."""
    contexts: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        ctx = browser.new_context(**{"viewport": DESKTOP, **options})
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()


class Watch:
    """What a page did that it never should: JS dialogs, uncaught errors, CSP
    violations, requests to anywhere but chatsvc."""

    def __init__(self, page: Page, origin: str) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.foreign: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", self._console)
        page.on("request", lambda request: self._request(request, origin))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _request(self, request: Request, origin: str) -> None:
        if not request.url.startswith(origin + "/"):
            self.foreign.append(request.url)

    def _console(self, msg: Any) -> None:
        if "Content Security Policy" in msg.text:
            self.csp.append(msg.text)

    def check(self) -> None:
        assert self.dialogs == [], "a JS dialog opened"
        assert self.errors == [], "uncaught page errors"
        assert self.csp == [], "CSP violations"
        assert self.foreign == [], "the page used the network beyond chatsvc"


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    made: list[Watch] = []
    yield made
    for w in made:
        w.check()


@pytest.fixture
def open_page(
    new_context: Callable[..., BrowserContext], watches: list[Watch]
) -> Callable[..., Page]:
    """open_page(url, context=None, ready=True): the chat page, served under CSP."""

    def open_(
        url: str, context: BrowserContext | None = None, ready: bool = True
    ) -> Page:
        ctx = context or new_context()
        page = ctx.new_page()
        watches.append(Watch(page, url))
        response = page.goto(url + "/")
        # The server's own policy: the watch above fails the test on a violation.
        assert response is not None
        assert response.headers["content-security-policy"] == CSP
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        if ready:
            expect(page.locator("#model")).to_be_enabled()
        return page

    return open_


def send(page: Page, text: str) -> None:
    page.locator("#input").fill(text)
    page.locator("#input").press("Enter")


def last_reply(page: Page) -> Any:
    return page.locator(".msg-assistant").last


def wait_status(page: Page, status: str) -> None:
    expect(last_reply(page)).to_have_attribute("data-status", status)


def chat_bodies(sim: Simulator) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.path == "/api/chat"]


# ---------------------------------------------------------------- streaming


def test_reply_streams_visibly_with_stats(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    sim.settings.interval = 0.1
    sim.settings.chunks = 20
    page = open_page(gateway.url)
    send(page, "hello there")

    streaming_text = """() => {
        const m = [...document.querySelectorAll('.msg-assistant')].pop();
        return m && m.dataset.status === 'streaming'
            ? m.querySelector('.msg-body').textContent : null;
    }"""
    page.wait_for_function(f"() => ({streaming_text})()?.length > 0")
    first = page.evaluate(streaming_text)
    # the same reply, still streaming, with more text: it grows as chunks arrive
    page.wait_for_function(
        f"n => ({streaming_text})()?.length > n", arg=len(first), polling="raf"
    )
    second = page.evaluate(streaming_text)
    assert second is not None and second.startswith(first) and len(second) > len(first)
    # time to first token is shown while the reply is still streaming
    reply = last_reply(page)
    expect(reply.locator(".stat-ttft")).to_have_text(
        re.compile(r"^first token \d+\.\d\d s$")
    )
    assert reply.get_attribute("data-status") == "streaming"

    wait_status(page, "done")
    # tokens per second from the final chunk's eval_count / eval_duration
    expect(reply.locator(".stat-tps")).to_have_text(re.compile(r"^\d+\.\d tok/s$"))
    expect(reply.locator(".msg-error")).to_be_hidden()
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#input")).to_be_focused()


def test_markdown_renders(sim: Simulator, gateway: Any, open_page: Any) -> None:
    page = open_page(gateway.url)
    send(
        page,
        "[echo]\n\n## Steps\n\n1. **first** step\n2. call `greet()`\n\n"
        "```python\nprint('<b>hi</b>')\n```\n\nsee [docs](https://ollama.com) "
        "and [bad](javascript:alert(3))",
    )
    wait_status(page, "done")
    body = last_reply(page).locator(".msg-body")
    expect(body.locator("h2")).to_have_text("Steps")
    expect(body.locator("ol > li")).to_have_count(2)
    expect(body.locator("li strong")).to_have_text("first")
    expect(body.locator("li code")).to_have_text("greet()")
    expect(body.locator("pre code")).to_have_text("print('<b>hi</b>')")
    expect(body.locator("pre b")).to_have_count(0)
    link = body.locator("a")
    expect(link).to_have_count(1)  # the javascript: link is plain text
    expect(link).to_have_attribute("href", "https://ollama.com/")
    expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    expect(body).to_contain_text("and bad")


def test_default_reply_markdown(sim: Simulator, gateway: Any, open_page: Any) -> None:
    page = open_page(gateway.url)
    send(page, _prompt_with_code())
    wait_status(page, "done")
    expect(last_reply(page).locator(".msg-body pre code")).to_have_count(1)
    expect(last_reply(page).locator(".msg-body p code")).not_to_have_count(0)


def test_html_from_model_and_user_is_text(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    # [echo] makes the model's reply exactly the user's text
    send(page, f"[echo] {XSS} **bold** `<script>x</script>`")
    wait_status(page, "done")
    user = page.locator(".msg-user .msg-body")
    reply = last_reply(page).locator(".msg-body")
    expect(user).to_contain_text(XSS)
    expect(reply).to_contain_text(XSS)
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("code")).to_have_text("<script>x</script>")
    expect(page.locator("#messages img")).to_have_count(0)
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("#messages script")).to_have_count(0)
    expect(page.locator("#chat-list")).to_contain_text("<img src=x")
    # the Watch fixture asserts no alert() dialog opened


# ---------------------------------------------------------------- stop and errors


def test_stop_aborts_and_server_hangs_up(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    sim.settings.interval = 0.2
    sim.settings.chunks = 200
    page = open_page(gateway.url)
    send(page, "tell me a long story")
    expect(last_reply(page).locator(".msg-body")).not_to_be_empty()
    expect(page.locator("#send")).to_be_hidden()
    page.locator("#stop").click()

    wait_status(page, "stopped")
    expect(last_reply(page).locator(".badge")).to_have_text("Stopped")
    hangup = sim.wait_hangup(2)
    assert hangup is not None, "the stop did not reach Ollama"
    assert hangup.path == "/api/chat"
    assert 0 < hangup.chunks_sent < 200
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#input")).to_be_focused()
    partial = last_reply(page).locator(".msg-body").inner_text()

    # the stopped reply stays in the history as the assistant's words
    sim.settings.chunks = 3
    sim.settings.interval = 0.005
    send(page, "go on")
    wait_status(page, "done")
    messages = chat_bodies(sim)[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    stored = page.evaluate(STORED_CHATS)[0]["messages"][1]
    assert stored["status"] == "stopped"
    assert messages[1]["content"] == stored["content"]
    assert _words(stored["content"]) == _words(partial)


def test_escape_stops(sim: Simulator, gateway: Any, open_page: Any) -> None:
    sim.settings.interval = 0.2
    sim.settings.chunks = 200
    page = open_page(gateway.url)
    send(page, "another long story")
    expect(last_reply(page).locator(".msg-body")).not_to_be_empty()
    page.locator("#input").press("Escape")
    wait_status(page, "stopped")
    assert sim.wait_hangup(2) is not None


def test_in_band_error_is_shown(sim: Simulator, gateway: Any, open_page: Any) -> None:
    sim.settings.fault = "error_after"
    sim.settings.fault_after = 3
    sim.settings.fault_message = "the model runner crashed: out of memory"
    page = open_page(gateway.url)
    send(page, "hello")
    wait_status(page, "failed")
    reply = last_reply(page)
    expect(reply.locator(".msg-error")).to_have_text(
        "The model stopped with an error: the model runner crashed: out of memory."
    )
    expect(reply.locator(".msg-body")).not_to_be_empty()  # the partial text stays
    expect(reply.locator(".badge")).to_have_text("Failed")
    expect(reply.locator("button.retry")).to_be_visible()

    # Retry replaces the failed reply with a new one
    sim.settings.fault = None
    reply.locator("button.retry").click()
    wait_status(page, "done")
    expect(page.locator(".msg-assistant")).to_have_count(1)


@pytest.mark.parametrize("fault", ["drop_after", "cut_before_done"])
def test_upstream_breaking_mid_stream_is_shown(
    sim: Simulator, gateway: Any, open_page: Any, fault: str
) -> None:
    sim.settings.fault = fault
    sim.settings.fault_after = 3
    page = open_page(gateway.url)
    send(page, "hello")
    expect(last_reply(page)).to_have_attribute("data-status", re.compile("failed|lost"))
    expect(last_reply(page).locator(".msg-error")).not_to_be_empty()


def test_unreachable_upstream_is_shown(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    gw = start_gateway(OLLAMA_HOST="http://127.0.0.1:9")
    page = open_page(gw.url, ready=False)
    # the model list cannot load: said in a banner with a retry
    expect(page.locator("#banner")).to_contain_text("Ollama")
    expect(page.locator("#banner-retry")).to_be_visible()
    send(page, "hello")
    wait_status(page, "failed")
    error = last_reply(page).locator(".msg-error")
    expect(error).to_contain_text("cannot reach Ollama")
    expect(error).to_contain_text("Try again")


def test_chatsvc_down_is_shown(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    gw = start_gateway()
    page = open_page(gw.url)
    gw.stop()
    send(page, "hello")
    wait_status(page, "failed")
    expect(last_reply(page).locator(".msg-error")).to_contain_text(
        "Cannot reach chatsvc"
    )
    expect(page.locator("#send")).to_be_visible()


def test_connection_lost_mid_stream(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    sim.settings.interval = 0.2
    sim.settings.chunks = 200
    gw = start_gateway()
    page = open_page(gw.url)
    send(page, "hello")
    expect(last_reply(page).locator(".msg-body")).not_to_be_empty()
    # kill the workers (not the master): the open response dies mid-body
    for pid in _children(gw.proc.pid):
        os.kill(pid, signal.SIGKILL)
    wait_status(page, "lost")
    reply = last_reply(page)
    expect(reply.locator(".msg-error")).to_contain_text(
        "connection to chatsvc was lost"
    )
    expect(reply.locator(".msg-body")).not_to_be_empty()
    expect(reply.locator(".badge")).to_have_text("Connection lost")


def test_stream_without_done_line_says_connection_lost(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    lines = [
        {
            "model": "m",
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": w},
            "done": False,
        }
        for w in ("Half", " an", " answer")
    ]
    page.route(
        gateway.url + "/api/chat",
        lambda route: route.fulfill(
            status=200,
            content_type="application/x-ndjson",
            body="".join(json.dumps(line) + "\n" for line in lines),
        ),
    )
    send(page, "hello")
    wait_status(page, "lost")
    expect(last_reply(page).locator(".msg-body")).to_have_text("Half an answer")
    expect(last_reply(page).locator(".msg-error")).to_contain_text("connection")


@pytest.mark.parametrize(
    ("status", "headers", "error", "expected"),
    [
        (
            400,
            {},
            "messages must be a list",
            "could not accept the request: messages must be a list.",
        ),
        (
            403,
            {},
            "model 'x' is not allowed",
            "This model is not allowed on this server",
        ),
        (413, {}, "the request body is too large", "too long for the server"),
        (429, {"Retry-After": "7"}, "too many streams", "Try again in 7 s."),
        (
            502,
            {},
            "upstream broke",
            "The model server (Ollama) answered with an error: upstream broke.",
        ),
        (
            503,
            {"Retry-After": "3"},
            "cannot reach Ollama at x",
            "cannot reach Ollama at x. Try again in 3 s.",
        ),
        (504, {}, "no first token in 300 s", "did not start answering in time"),
    ],
)
def test_http_errors_in_words(
    sim: Simulator,
    gateway: Any,
    open_page: Any,
    status: int,
    headers: dict[str, str],
    error: str,
    expected: str,
) -> None:
    page = open_page(gateway.url)
    page.route(
        gateway.url + "/api/chat",
        lambda route: route.fulfill(
            status=status,
            headers=headers,
            content_type="application/json",
            body=json.dumps({"error": error}),
        ),
    )
    send(page, "hello")
    wait_status(page, "failed")
    expect(last_reply(page).locator(".msg-error")).to_contain_text(expected)


def test_real_404_for_a_model_that_went_away(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    chosen = page.locator("#model").input_value()
    sim.settings.models = ["something-else"]
    send(page, "hello")
    wait_status(page, "failed")
    expect(last_reply(page).locator(".msg-error")).to_contain_text(
        f"model '{chosen}' not found"
    )


def test_real_413_for_a_long_conversation(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    gw = start_gateway(CHATSVC_MAX_BODY_BYTES="2000")
    page = open_page(gw.url)
    send(page, "x" * 3000)
    wait_status(page, "failed")
    expect(last_reply(page).locator(".msg-error")).to_contain_text("too long")


# ---------------------------------------------------------------- conversations


def test_reload_keeps_the_conversation(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    send(page, "remember me")
    wait_status(page, "done")
    reply = last_reply(page).locator(".msg-body").text_content()
    page.reload()
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    expect(page.locator(".msg-user .msg-body")).to_have_text("remember me")
    assert last_reply(page).locator(".msg-body").text_content() == reply
    expect(last_reply(page)).to_have_attribute("data-status", "done")
    expect(page.locator("#chat-list li")).to_have_count(1)
    expect(page.locator("#chat-title")).to_have_text("remember me")


def test_reload_mid_stream_keeps_the_partial_reply(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    sim.settings.interval = 0.2
    sim.settings.chunks = 200
    page = open_page(gateway.url)
    send(page, "a long one")
    body = last_reply(page).locator(".msg-body")
    # wait until the partial text has been saved (saves happen at least every second)
    page.wait_for_function(
        f"""() => ({STORED_CHATS})().some(c =>
            c.messages.some(m => m.role === 'assistant' && m.content))"""
    )
    expect(body).not_to_be_empty()
    page.reload()
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    wait_status(page, "interrupted")
    expect(last_reply(page).locator(".msg-body")).not_to_be_empty()
    expect(last_reply(page).locator(".msg-error")).to_contain_text("reloaded")
    assert sim.wait_hangup(2) is not None  # leaving the page cancelled the stream


def test_second_turn_sends_the_history(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    page.locator("#system-box summary").click()
    page.locator("#system").fill("Answer like a pirate.")
    page.locator("#input").click()
    send(page, "first question")
    wait_status(page, "done")
    first_reply = last_reply(page).locator(".msg-body").inner_text()
    send(page, "second question")
    expect(page.locator(".msg-assistant")).to_have_count(2)
    wait_status(page, "done")

    body = chat_bodies(sim)[-1]
    assert body["stream"] is True
    assert body["model"] == page.locator("#model").input_value()
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "Answer like a pirate."
    assert body["messages"][1]["content"] == "first question"
    # the reply's markdown source, as kept in localStorage, went back verbatim
    stored = page.evaluate(STORED_CHATS)
    assert len(stored) == 1
    assert body["messages"][2]["content"] == stored[0]["messages"][1]["content"]
    assert _words(body["messages"][2]["content"]) == _words(first_reply)
    assert body["messages"][3]["content"] == "second question"

    # the system prompt belongs to the chat and survives a reload
    page.reload()
    expect(page.locator("#system")).to_have_value("Answer like a pirate.")


def test_chats_list_new_and_delete(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    page = open_page(gateway.url)
    send(page, "chat one")
    wait_status(page, "done")
    page.locator("#new-chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#input")).to_be_focused()
    send(page, "chat two")
    wait_status(page, "done")
    items = page.locator("#chat-list li")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("chat two")  # most recent first

    # a new chat starts its own history
    assert [m["content"] for m in chat_bodies(sim)[-1]["messages"]] == ["chat two"]

    items.filter(has_text="chat one").locator(".chat-open").click()
    expect(page.locator(".msg-user .msg-body")).to_have_text("chat one")

    delete = items.filter(has_text="chat one").locator(".chat-delete")
    delete.click()
    expect(items).to_have_count(2)  # the first click only arms it
    delete.click()
    expect(items).to_have_count(1)
    expect(page.locator(".msg-user .msg-body")).to_have_text("chat two")
    page.reload()
    expect(page.locator("#chat-list li")).to_have_count(1)
    expect(page.locator("#chat-list li")).to_contain_text("chat two")


def test_reply_keeps_streaming_into_its_chat_while_another_is_shown(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    sim.settings.interval = 0.05
    sim.settings.chunks = 60
    page = open_page(gateway.url)
    send(page, "first chat")
    expect(last_reply(page).locator(".msg-body")).not_to_be_empty()
    page.locator("#new-chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#stop")).to_be_visible()  # one reply at a time
    # it finishes while out of sight, and is complete when shown again
    page.wait_for_function(
        f"""() => ({STORED_CHATS})().some(c =>
            c.messages.some(m => m.role === 'assistant' && m.status === 'done'))"""
    )
    expect(page.locator("#send")).to_be_visible()
    page.locator(".chat-open", has_text="first chat").click()
    wait_status(page, "done")
    stored = page.evaluate(STORED_CHATS)[0]["messages"][1]["content"]
    assert last_reply(page).locator(".msg-body").text_content() != ""
    assert len(stored.split()) >= 40


def test_model_picker_filled_and_remembered(
    sim: Simulator, gateway: Any, open_page: Any
) -> None:
    sim.settings.models = ["llama3.2", "mistral"]
    page = open_page(gateway.url)
    options = page.locator("#model option")
    expect(options).to_have_count(2)
    names = options.evaluate_all("options => options.map(o => o.value)")
    assert names == ["llama3.2:latest", "mistral:latest"]
    assert options.all_inner_texts() == ["llama3.2", "mistral"]
    page.locator("#model").select_option(names[1])
    page.reload()
    expect(page.locator("#model")).to_be_enabled()
    expect(page.locator("#model")).to_have_value(names[1])
    send(page, "hi")
    wait_status(page, "done")
    assert chat_bodies(sim)[-1]["model"] == names[1]
    expect(last_reply(page).locator(".msg-who")).to_have_text(names[1])


def test_keyboard(sim: Simulator, gateway: Any, open_page: Any) -> None:
    page = open_page(gateway.url)
    box = page.locator("#input")
    expect(box).to_be_focused()  # ready to type on load
    box.press_sequentially("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value("line one\nline two")
    expect(page.locator(".msg")).to_have_count(0)
    box.press("Enter")
    expect(page.locator(".msg-user .msg-body")).to_have_text("line one\nline two")
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    wait_status(page, "done")
    expect(box).to_be_focused()
    # an empty message is not sent
    box.press("Enter")
    expect(page.locator(".msg-user")).to_have_count(1)


# ---------------------------------------------------------------- API keys


def test_api_key_is_asked_for_kept_and_asked_again(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS="k1,k2")
    page = open_page(gw.url, ready=False)
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()  # /api/tags answered 401

    page.locator("#key-input").fill("wrong")
    page.locator("#key-input").press("Enter")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-message")).to_contain_text("not accepted")

    page.locator("#key-input").fill("k1")
    page.locator("#key-save").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#model")).to_be_enabled()

    with page.expect_request(gw.url + "/api/chat") as sent:
        send(page, "hello with a key")
    assert sent.value.headers.get("authorization") == "Bearer k1"
    wait_status(page, "done")
    assert "authorization" not in {k.lower() for k in sim.requests[-1].headers}

    # the key survives a reload: no question asked
    page.reload()
    expect(page.locator("#model")).to_be_enabled()
    expect(dialog).to_be_hidden()

    # the key stops working: 401 asks again, and the message is sent after
    page.evaluate("localStorage.setItem('chatsvc.apiKey', 'revoked')")
    sent_headers: list[str | None] = []

    def on_request(request: Request) -> None:
        if request.url.endswith("/api/chat"):
            sent_headers.append(request.headers.get("authorization"))

    page.on("request", on_request)
    send(page, "second message")
    expect(dialog).to_be_visible()
    page.locator("#key-input").fill("k2")
    page.locator("#key-input").press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator(".msg-assistant")).to_have_count(2)
    wait_status(page, "done")
    assert sent_headers == ["Bearer revoked", "Bearer k2"]
    assert chat_bodies(sim)[-1]["messages"][-1]["content"] == "second message"


def test_api_key_dialog_cancel_keeps_the_message(
    sim: Simulator, start_gateway: Any, open_page: Any
) -> None:
    gw = start_gateway(CHATSVC_API_KEYS="k1")
    page = open_page(gw.url, ready=False)
    page.locator("#key-cancel").click()
    expect(page.locator("#key-dialog")).to_be_hidden()
    send(page, "no key yet")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#key-dialog")).to_be_hidden()
    wait_status(page, "failed")
    expect(last_reply(page).locator(".msg-error")).to_contain_text("API key")
    expect(page.locator(".msg-user .msg-body")).to_have_text("no key yet")


# ---------------------------------------------------------------- screenshots


@pytest.mark.parametrize(
    ("name", "viewport", "scheme"),
    [
        ("desktop", DESKTOP, "light"),
        ("phone", PHONE, "light"),
        ("desktop-dark", DESKTOP, "dark"),
        ("phone-dark", PHONE, "dark"),
    ],
)
def test_screenshots(
    sim: Simulator,
    gateway: Any,
    open_page: Any,
    new_context: Any,
    name: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    # reduced motion: the phone's chat drawer is pictured open, not mid-slide
    ctx = new_context(viewport=viewport, color_scheme=scheme, reduced_motion="reduce")
    page = open_page(gateway.url, context=ctx)
    send(page, "Some markdown please")
    wait_status(page, "done")
    send(page, _prompt_with_code())
    expect(page.locator(".msg-assistant")).to_have_count(2)
    wait_status(page, "done")
    expect(last_reply(page).locator("pre")).to_have_count(1)
    # nothing sticks out sideways on a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"chat-{name}.png"))
    if viewport is PHONE:
        page.locator("#open-sidebar").click()
        expect(page.locator("#sidebar")).to_be_in_viewport()
        page.screenshot(path=str(ARTIFACTS / f"chat-{name}-chats.png"))
        page.locator("#scrim").click(position={"x": viewport["width"] - 20, "y": 300})
        expect(page.locator("#sidebar")).not_to_be_in_viewport()


# ---------------------------------------------------------------- helpers


def _prompt_with_code() -> str:
    """A prompt for which the simulator's canned reply holds a code block."""
    for i in range(1000):
        prompt = f"Show me some code {i}"
        if zlib.crc32(prompt.encode()) % 6 == 2:
            return prompt
    raise AssertionError("unreachable")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out
