// Unit tests for static/api.js: what chatsvc's answers mean to a person. Run with `node --test tests/js/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  base64OfDataURL,
  chunkParts,
  errorText,
  isVision,
  modelsFrom,
  readSSE,
  sentence,
  SSEParser,
  serverMessage,
  shortName,
  toolCallText,
} from "../../static/api.js";

test("sentence capitalises and ends once", () => {
  assert.equal(sentence("model 'x' not found"), "Model 'x' not found.");
  assert.equal(sentence("Done!"), "Done!");
  assert.equal(sentence("  "), "");
});

test("serverMessage reads chatsvc's and OpenAI's shapes, or the raw text", () => {
  assert.equal(serverMessage('{"error":"boom"}'), "boom");
  assert.equal(serverMessage('{"error":{"message":"bang"}}'), "bang");
  assert.equal(serverMessage(" <html>oops</html> "), "<html>oops</html>");
  assert.equal(serverMessage("x".repeat(400)).length, 300);
});

// One voice: one plain sentence, from the status and the server's message,
// never the server's curl-level hint, never the same thing said twice.
const CASES = [
  [401, "this server needs an API key: send Authorization: Bearer <key>", null, "This server needs an API key."],
  [401, "the API key is not valid", null, "This server did not accept the saved API key."],
  [
    403,
    "model 'llama3.2:latest' is not available here; choose one of: qwen3",
    null,
    "Model 'llama3.2:latest' is not available here; choose one of: qwen3.",
  ],
  [403, "", null, "This server does not allow that model."],
  [400, "messages must be a list", null, "The server could not accept this request: messages must be a list."],
  [404, "model 'x' not found", null, "Model 'x' not found."],
  [413, "the request body is too large", null, "This conversation is too long for the server to accept; start a new chat to go on."],
  [429, "you already have 2 streams open; wait for one to finish", "7", "You already have 2 streams open; wait for one to finish. Try again in 7 s."],
  [503, "the server has 64 streams open; try again shortly", "3", "The server has 64 streams open; try again shortly."],
  [503, "cannot reach Ollama at x", "3", "Cannot reach Ollama at x. Try again in 3 s."],
  [502, "upstream broke", null, "The model server failed: upstream broke."],
  [504, "", null, "The model did not start answering in time. Try again in a moment."],
  [418, "", null, "The server answered with HTTP 418."],
];
for (const [status, message, retryAfter, expected] of CASES) {
  test(`errorText ${status} ${message.slice(0, 30)}`, () => {
    const text = errorText(status, message, retryAfter);
    assert.equal(text, expected);
    assert.doesNotMatch(text, /Authorization|Bearer/);
  });
}

test("modelsFrom labels each model with its size and quantisation", () => {
  const tags = {
    models: [
      { name: "llama3.2:latest", details: { parameter_size: "3.2B", quantization_level: "Q4_K_M" } },
      { model: "tiny:1b", details: {} },
      { name: "" },
      null,
    ],
  };
  assert.deepEqual(modelsFrom(tags), [
    { name: "llama3.2:latest", label: "llama3.2 · 3.2B · Q4_K_M" },
    { name: "tiny:1b", label: "tiny:1b" },
  ]);
  assert.deepEqual(modelsFrom({}), []);
  assert.equal(shortName("a:latest"), "a");
});

test("isVision: capabilities first, then clip/mllama families", () => {
  assert.equal(isVision({ capabilities: ["completion", "vision"] }), true);
  assert.equal(isVision({ capabilities: ["completion", "tools"], details: { families: ["clip"] } }), false);
  assert.equal(isVision({ details: { families: ["llama", "clip"] } }), true);
  assert.equal(isVision({ details: { families: ["mllama"] } }), true);
  assert.equal(isVision({ details: { families: ["llama"] } }), false);
  assert.equal(isVision(null), false);
});

test("base64OfDataURL", () => {
  assert.equal(base64OfDataURL("data:image/png;base64,iVBORw0K"), "iVBORw0K");
  assert.equal(base64OfDataURL("nothing"), "");
});

test("chunkParts: chat and generate shapes, thinking, tool calls, done", () => {
  assert.deepEqual(chunkParts({ message: { content: "a", thinking: "t" }, done: false }), {
    content: "a",
    thinking: "t",
    toolCalls: [],
    done: false,
  });
  const calls = [{ function: { name: "get_weather", arguments: { city: "Oslo" } } }];
  assert.deepEqual(chunkParts({ message: { content: "", tool_calls: calls }, done: false }).toolCalls, calls);
  assert.equal(chunkParts({ response: "r", done: true }).content, "r");
  assert.equal(chunkParts({ done: true }).done, true);
  assert.equal(toolCallText(calls[0]), 'get_weather({"city":"Oslo"})');
  assert.equal(toolCallText({ function: { arguments: "{}" } }), "(unnamed tool)({})");
});

test("SSEParser: events split anywhere, ids carried, comments and retry skipped", () => {
  const wire = 'retry: 3000\n\nid: 1\ndata: {"a":1}\n\n: ping\n\nid: 2\nevent: done\ndata: {"b":2}\n\nevent: error\ndata: {"error":"x"}\n\n';
  const want = [
    { id: "1", event: "message", data: '{"a":1}' },
    { id: "2", event: "done", data: '{"b":2}' },
    { id: "2", event: "error", data: '{"error":"x"}' },
  ];
  for (let cut = 0; cut <= wire.length; cut++) {
    const parser = new SSEParser();
    const got = parser.push(wire.slice(0, cut)).concat(parser.push(wire.slice(cut)));
    assert.deepEqual(got, want, `cut at ${cut}`);
  }
});

test("readSSE decodes a character split across reads and a last event without its blank line", async () => {
  const bytes = new TextEncoder().encode("id: 7\ndata: é\n\nid: 8\ndata: z\n");
  const parts = [bytes.slice(0, 15), bytes.slice(15)];
  const reader = { read: async () => (parts.length ? { value: parts.shift(), done: false } : { done: true }) };
  const got = [];
  for await (const event of readSSE(reader)) got.push(event);
  assert.deepEqual(got, [
    { id: "7", event: "message", data: "é" },
    { id: "8", event: "message", data: "z" },
  ]);
});
