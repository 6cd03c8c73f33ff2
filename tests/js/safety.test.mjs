// Source checks for the page: no HTML-parsing sinks in our scripts, and no
// inline script or handler in the template (so a strict CSP can apply).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));
const scripts = readdirSync(root + "static").filter((f) => f.endsWith(".js"));

test("the page has its scripts", () => {
  for (const f of ["chat.js", "store.js", "api.js", "ndjson.js", "markdown.js"]) assert.ok(scripts.includes(f), f);
});

for (const file of scripts) {
  test(`static/${file} uses no HTML-parsing sink`, () => {
    const src = readFileSync(root + "static/" + file, "utf8").replace(/^\s*\/\/.*$/gm, "");
    for (const sink of [/\.innerHTML\b/, /\.outerHTML\b/, /insertAdjacentHTML/, /document\.write/, /\beval\s*\(/, /new\s+Function\s*\(/, /createContextualFragment/, /DOMParser/, /srcdoc/]) {
      assert.doesNotMatch(src, sink, `${file}: ${sink}`);
    }
  });
}

test("templates/index.html: no inline handlers, styles, or scripts except the JSON config", () => {
  const html = readFileSync(root + "templates/index.html", "utf8");
  assert.doesNotMatch(html, /\son[a-z]+\s*=/i);
  assert.doesNotMatch(html, /\sstyle\s*=/i);
  assert.doesNotMatch(html, /<style/i);
  assert.doesNotMatch(html, /javascript:/i);
  const scriptTags = html.match(/<script\b[^>]*>/gi);
  assert.deepEqual(scriptTags, ['<script type="application/json" id="config">', '<script type="module" src="{{ url_for(\'static\', filename=\'chat.js\') }}">']);
  assert.match(html, /\|tojson/);
  assert.doesNotMatch(html, /https?:\/\//, "no network beyond chatsvc itself");
});
