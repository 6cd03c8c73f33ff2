// Unit tests for static/ndjson.js: run with `node --test tests/js/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { NDJSONParser, NDJSONByteDecoder, readNDJSON } from "../../static/ndjson.js";

const enc = new TextEncoder();

function chunk(content, extra = {}) {
  return { model: "m", created_at: "2026-01-02T03:04:05Z", message: { role: "assistant", content }, done: false, ...extra };
}

test("one line per push", () => {
  const p = new NDJSONParser();
  assert.deepEqual(p.push(JSON.stringify(chunk("a")) + "\n"), [chunk("a")]);
  assert.deepEqual(p.flush(), []);
});

test("a line split across pushes is returned once complete", () => {
  const line = JSON.stringify(chunk("Hello")) + "\n";
  for (let cut = 1; cut < line.length; cut++) {
    const p = new NDJSONParser();
    assert.deepEqual(p.push(line.slice(0, cut)), [], `cut at ${cut}`);
    assert.deepEqual(p.push(line.slice(cut)), [chunk("Hello")], `cut at ${cut}`);
  }
});

test("several lines in one push, in order", () => {
  const p = new NDJSONParser();
  const text = [chunk("a"), chunk("b"), chunk("", { done: true, eval_count: 2 })].map((o) => JSON.stringify(o) + "\n").join("");
  assert.deepEqual(p.push(text), [chunk("a"), chunk("b"), chunk("", { done: true, eval_count: 2 })]);
});

test("several lines and a partial one in one push", () => {
  const p = new NDJSONParser();
  const a = JSON.stringify(chunk("a")) + "\n";
  const b = JSON.stringify(chunk("b")) + "\n";
  assert.deepEqual(p.push(a + b.slice(0, 10)), [chunk("a")]);
  assert.deepEqual(p.push(b.slice(10)), [chunk("b")]);
});

test("flush parses a last line without a newline", () => {
  const p = new NDJSONParser();
  assert.deepEqual(p.push('{"error":"boom"}'), []);
  assert.deepEqual(p.flush(), [{ error: "boom" }]);
  assert.deepEqual(p.flush(), []);
});

test("blank lines and CRLF endings are tolerated", () => {
  const p = new NDJSONParser();
  assert.deepEqual(p.push('\n{"a":1}\r\n\r\n  \n{"b":2}\n'), [{ a: 1 }, { b: 2 }]);
});

test("invalid lines are reported and skipped, the stream goes on", () => {
  const bad = [];
  const p = new NDJSONParser({ onInvalid: (line) => bad.push(line) });
  assert.deepEqual(p.push('data: {"a":1}\n{"b":2}\n{"c":\n'), [{ b: 2 }]);
  assert.deepEqual(bad, ['data: {"a":1}', '{"c":']);
});

test("U+2028, U+2029 and U+0085 inside strings do not split lines", () => {
  const p = new NDJSONParser();
  const raw = '{"message":{"content":"a\u2028b\u2029c\u0085d"}}\n';
  assert.deepEqual(p.push(raw), [{ message: { content: "a\u2028b\u2029c\u0085d" } }]);
  const escaped = JSON.stringify({ message: { content: "x\ny" } }) + "\n";
  assert.deepEqual(p.push(escaped), [{ message: { content: "x\ny" } }]);
});

test("a multi-byte character split across reads goes through a real TextDecoder", () => {
  // "é" is 2 bytes, "€" 3, "😀" 4: cut every line at every byte position
  const objs = [chunk("café €5 😀"), chunk("naïve 日本語"), chunk("", { done: true })];
  const bytes = enc.encode(objs.map((o) => JSON.stringify(o) + "\n").join(""));
  for (let cut = 1; cut < bytes.length; cut++) {
    const d = new NDJSONByteDecoder();
    const got = [...d.push(bytes.slice(0, cut)), ...d.push(bytes.slice(cut)), ...d.flush()];
    assert.deepEqual(got, objs, `cut at byte ${cut}`);
  }
});

test("one byte per read", () => {
  const objs = [chunk("😀 ünïcödé"), chunk("ok", { done: true })];
  const bytes = enc.encode(objs.map((o) => JSON.stringify(o) + "\n").join(""));
  const d = new NDJSONByteDecoder();
  const got = [];
  for (const b of bytes) got.push(...d.push(new Uint8Array([b])));
  got.push(...d.flush());
  assert.deepEqual(got, objs);
});

test("without stream:true decoding a split character would corrupt it (why the decoder matters)", () => {
  const bytes = enc.encode('{"c":"€"}\n');
  const cut = bytes.indexOf(0xe2) + 1; // inside the 3-byte euro sign
  const naive = new TextDecoder().decode(bytes.slice(0, cut)) + new TextDecoder().decode(bytes.slice(cut));
  assert.notEqual(JSON.parse(naive).c, "€");
  const d = new NDJSONByteDecoder();
  assert.deepEqual([...d.push(bytes.slice(0, cut)), ...d.push(bytes.slice(cut))], [{ c: "€" }]);
});

function fakeReader(pieces, { failAt = -1 } = {}) {
  let i = 0;
  return {
    async read() {
      if (i === failAt) throw new TypeError("network error");
      if (i >= pieces.length) return { done: true, value: undefined };
      return { done: false, value: pieces[i++] };
    },
  };
}

test("readNDJSON yields objects from arbitrary byte reads", async () => {
  const objs = [chunk("Hé"), chunk("llo 👋"), chunk("", { done: true, eval_count: 2, eval_duration: 1e9 })];
  const bytes = enc.encode(objs.map((o) => JSON.stringify(o) + "\n").join(""));
  const pieces = [];
  for (let i = 0; i < bytes.length; i += 7) pieces.push(bytes.slice(i, i + 7));
  const got = [];
  for await (const o of readNDJSON(fakeReader(pieces))) got.push(o);
  assert.deepEqual(got, objs);
});

test("readNDJSON yields lines as they complete, before the stream ends", async () => {
  const a = enc.encode(JSON.stringify(chunk("a")) + "\n");
  const seen = [];
  let reads = 0;
  const reader = {
    async read() {
      reads++;
      if (reads === 1) return { done: false, value: a };
      seen.push("second read");
      return { done: true };
    },
  };
  for await (const o of readNDJSON(reader)) seen.push(o.message.content);
  assert.deepEqual(seen, ["a", "second read"]);
});

test("readNDJSON yields a final line without newline at end of stream", async () => {
  const got = [];
  for await (const o of readNDJSON(fakeReader([enc.encode('{"a":1}\n{"error":"x"}')]))) got.push(o);
  assert.deepEqual(got, [{ a: 1 }, { error: "x" }]);
});

test("readNDJSON passes a failing read on to the caller after the lines before it", async () => {
  const got = [];
  await assert.rejects(async () => {
    for await (const o of readNDJSON(fakeReader([enc.encode('{"a":1}\n{"b"')], { failAt: 1 }))) got.push(o);
  }, TypeError);
  assert.deepEqual(got, [{ a: 1 }]);
});
