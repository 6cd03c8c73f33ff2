// Unit tests for static/store.js: conversations as plain data. Run with `node --test tests/js/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  exportName,
  forkChat,
  historyFor,
  markInterrupted,
  newChat,
  parseChat,
  searchChats,
  sortChats,
  titleFrom,
  toJSON,
  toMarkdown,
} from "../../static/store.js";

function chat(id, title, messages, extra = {}) {
  return { ...newChat(id, 1), title, messages, ...extra };
}

test("parseChat keeps good chats and refuses anything else", () => {
  assert.equal(parseChat("not json"), null);
  assert.equal(parseChat("null"), null);
  assert.equal(parseChat(JSON.stringify({ id: 3, messages: [] })), null);
  const c = parseChat(
    JSON.stringify({
      id: "a",
      messages: [
        { role: "user", content: "hi", images: ["AAAA"] },
        { role: "user", content: 5 },
        null,
        { role: "assistant", content: "yo", images: [1], toolCalls: "x" },
      ],
    })
  );
  assert.equal(c.title, "");
  assert.equal(c.system, "");
  assert.equal(c.messages.length, 2);
  assert.deepEqual(c.messages[0].images, ["AAAA"]);
  assert.equal(c.messages[1].images, undefined);
  assert.equal(c.messages[1].toolCalls, undefined);
});

test("markInterrupted marks replies that were streaming", () => {
  const c = chat("a", "t", [{ role: "assistant", content: "half", status: "streaming" }]);
  assert.equal(markInterrupted(c), true);
  assert.equal(c.messages[0].status, "interrupted");
  assert.match(c.messages[0].error, /reloaded/);
  assert.equal(markInterrupted(c), false);
});

test("titleFrom: first line, shortened", () => {
  assert.equal(titleFrom("  hello\nworld"), "hello");
  assert.equal(titleFrom("   "), "New chat");
  assert.equal(titleFrom("x".repeat(80)), "x".repeat(57) + "…");
});

test("sortChats: newest first; searchChats: every word, any case, titles and messages", () => {
  const a = chat("a", "Pasta recipes", [{ role: "user", content: "How long to boil?" }], { updated: 1 });
  const b = chat("b", "Rust lifetimes", [{ role: "assistant", content: "The BORROW checker says no." }], { updated: 2 });
  assert.deepEqual(sortChats([a, b]).map((c) => c.id), ["b", "a"]);
  assert.deepEqual(searchChats([a, b], "").map((c) => c.id), ["a", "b"]);
  assert.deepEqual(searchChats([a, b], "pasta").map((c) => c.id), ["a"]);
  assert.deepEqual(searchChats([a, b], "borrow checker").map((c) => c.id), ["b"]);
  assert.deepEqual(searchChats([a, b], "borrow pasta").map((c) => c.id), []);
});

test("historyFor: system first, partial replies kept, empty and streaming ones left out, images and tool calls go back", () => {
  const c = chat(
    "a",
    "t",
    [
      { role: "user", content: "look", images: ["QUJD"] },
      { role: "assistant", content: "", status: "failed" },
      { role: "assistant", content: "", toolCalls: [{ function: { name: "f", arguments: {} } }] },
      { role: "assistant", content: "part", status: "stopped" },
      { role: "user", content: "go on" },
      { role: "assistant", content: "", status: "streaming" },
    ],
    { system: "Be brief." }
  );
  assert.deepEqual(historyFor(c), [
    { role: "system", content: "Be brief." },
    { role: "user", content: "look", images: ["QUJD"] },
    { role: "assistant", content: "", tool_calls: [{ function: { name: "f", arguments: {} } }] },
    { role: "assistant", content: "part" },
    { role: "user", content: "go on" },
  ]);
});

test("forkChat: a new chat up to the edited message; the original is untouched", () => {
  const msgs = [
    { role: "user", content: "one" },
    { role: "assistant", content: "reply one" },
    { role: "user", content: "two", images: ["QQ=="], imageNames: ["a.png"] },
    { role: "assistant", content: "reply two" },
  ];
  const c = chat("a", "t", msgs, { system: "sys" });
  const before = JSON.stringify(c);
  const f = forkChat(c, 2, "two, edited", "b", 9);
  assert.equal(JSON.stringify(c), before);
  assert.equal(f.id, "b");
  assert.equal(f.forkedFrom, "a");
  assert.equal(f.system, "sys");
  assert.deepEqual(f.messages.map((m) => m.content), ["one", "reply one", "two, edited"]);
  assert.deepEqual(f.messages[2].images, ["QQ=="]);
  f.messages[0].content = "changed";
  assert.equal(c.messages[0].content, "one"); // copies, not shared objects
  assert.throws(() => forkChat(c, 1, "x", "c", 9));
});

test("toMarkdown keeps what each side wrote verbatim; toJSON round-trips", () => {
  const c = chat(
    "a",
    "My chat",
    [
      { role: "user", content: "Show `code`" },
      { role: "assistant", model: "qwen3:latest", content: "```js\nx < 1\n```", thinking: "hmm\nok", error: "The model stopped." },
    ],
    { system: "Be brief." }
  );
  assert.equal(
    toMarkdown(c),
    "# My chat\n\n## System\n\nBe brief.\n\n## You\n\nShow `code`\n\n## qwen3:latest\n\n> hmm\n> ok\n\n```js\nx < 1\n```\n\n*The model stopped.*\n"
  );
  assert.deepEqual(JSON.parse(toJSON(c)), c);
});

test("exportName is safe on every system", () => {
  assert.equal(exportName({ title: "A/B: <test> ünïcode!" }, "md"), "AB-test-unicode.md");
  assert.equal(exportName({ title: "" }, "json"), "chat.json");
  assert.equal(exportName({ title: "///" }, "json"), "chat.json");
});
