// Unit tests for static/markdown.js: the pure token parser and DOM building
// (against the tiny DOM stand-in below). Run with `node --test tests/js/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { parseMarkdown, parseInline, renderMarkdown, safeHref } from "../../static/markdown.js";

// ---- A tiny DOM stand-in: enough of Document/Element/Text for
// markdown.js, and a serializer that escapes text so tests can compare markup.
// Any HTML-parsing entry point throws, so a test fails if one is ever used.

class Node {
  constructor(doc) {
    this.ownerDocument = doc;
    this.childNodes = [];
    this.parentNode = null;
  }
  appendChild(child) {
    if (child instanceof Fragment) {
      for (const c of [...child.childNodes]) this.appendChild(c);
      child.childNodes = [];
      return child;
    }
    if (child.parentNode) child.parentNode.childNodes.splice(child.parentNode.childNodes.indexOf(child), 1);
    child.parentNode = this;
    this.childNodes.push(child);
    return child;
  }
  append(...children) {
    for (const c of children) this.appendChild(typeof c === "string" ? new Text(this.ownerDocument, c) : c);
  }
  get textContent() {
    return this.childNodes.map((c) => c.textContent).join("");
  }
  set textContent(value) {
    this.childNodes = [];
    const s = String(value);
    if (s) this.appendChild(new Text(this.ownerDocument, s));
  }
}

class Text extends Node {
  constructor(doc, data) {
    super(doc);
    this.data = String(data);
    this.nodeType = 3;
  }
  get textContent() {
    return this.data;
  }
  set textContent(v) {
    this.data = String(v);
  }
}

class Fragment extends Node {
  constructor(doc) {
    super(doc);
    this.nodeType = 11;
  }
}

const forbidden = (name) => ({
  get() {
    throw new Error(`${name} used`);
  },
  set() {
    throw new Error(`${name} used`);
  },
});

class Element extends Node {
  constructor(doc, tag) {
    super(doc);
    this.nodeType = 1;
    this.tagName = tag.toUpperCase();
    this.attributes = new Map();
  }
  get className() {
    return this.attributes.get("class") || "";
  }
  set className(v) {
    this.attributes.set("class", String(v));
  }
  setAttribute(name, value) {
    this.attributes.set(name.toLowerCase(), String(value));
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  querySelectorAll(tag) {
    const out = [];
    const walk = (n) => {
      for (const c of n.childNodes) {
        if (c instanceof Element) {
          if (c.tagName === tag.toUpperCase()) out.push(c);
          walk(c);
        }
      }
    };
    walk(this);
    return out;
  }
}
for (const name of ["innerHTML", "outerHTML"]) Object.defineProperty(Element.prototype, name, forbidden(name));
Element.prototype.insertAdjacentHTML = () => {
  throw new Error("insertAdjacentHTML used");
};

function createDocument() {
  const doc = {
    createElement: (tag) => new Element(doc, tag),
    createTextNode: (data) => new Text(doc, data),
    createDocumentFragment: () => new Fragment(doc),
    write() {
      throw new Error("document.write used");
    },
  };
  return doc;
}

const escapeText = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const escapeAttr = (s) => escapeText(s).replace(/"/g, "&quot;");

/** Serialize nodes to markup; text is escaped, so "<img>" text shows as "&lt;img&gt;". */
function serialize(node) {
  if (node instanceof Text) return escapeText(node.data);
  const inner = node.childNodes.map(serialize).join("");
  if (node instanceof Fragment) return inner;
  const tag = node.tagName.toLowerCase();
  const attrs = [...node.attributes].map(([k, v]) => ` ${k}="${escapeAttr(v)}"`).join("");
  if (tag === "br" || tag === "hr") return `<${tag}${attrs}>`;
  return `<${tag}${attrs}>${inner}</${tag}>`;
}

/** Every element tag name in a tree, lower case. */
function tagsIn(node) {
  const out = [];
  const walk = (n) => {
    if (n instanceof Element) out.push(n.tagName.toLowerCase());
    n.childNodes.forEach(walk);
  };
  walk(node);
  return out;
}

// ---- tests

const html = (md) => serialize(renderMarkdown(md, createDocument()));
const text = (t) => ({ type: "text", text: t });

test("paragraphs: blank lines separate, single newlines become <br>", () => {
  assert.equal(html("one\ntwo\n\nthree"), "<p>one<br>two</p><p>three</p>");
});

test("headings", () => {
  assert.deepEqual(parseMarkdown("## Title ##"), [{ type: "heading", level: 2, children: [text("Title")] }]);
  assert.equal(html("# A\ntext"), "<h1>A</h1><p>text</p>");
  assert.equal(html("#hashtag"), "<p>#hashtag</p>");
});

test.describe("inline", () => {
  const cases = [
    ["**bold** and __bold__", "<p><strong>bold</strong> and <strong>bold</strong></p>"],
    ["*it* and _it_", "<p><em>it</em> and <em>it</em></p>"],
    ["***both***", "<p><strong><em>both</em></strong></p>"],
    ["**bold *nested* bold**", "<p><strong>bold <em>nested</em> bold</strong></p>"],
    ["~~gone~~", "<p><del>gone</del></p>"],
    ["use `x < y` here", "<p>use <code>x &lt; y</code> here</p>"],
    ["``a ` b``", "<p><code>a ` b</code></p>"],
    ["snake_case_name stays", "<p>snake_case_name stays</p>"],
    ["2 * 3 * 4", "<p>2 * 3 * 4</p>"],
    ["\\*not italic\\*", "<p>*not italic*</p>"],
    ["unclosed **bold", "<p>unclosed **bold</p>"],
    ["unclosed `code", "<p>unclosed `code</p>"],
    ["** spaced **", "<p>** spaced **</p>"],
  ];
  for (const [md, want] of cases) test(md, () => assert.equal(html(md), want));
});

test("links: http(s) only, with rel=noopener", () => {
  assert.equal(
    html("[docs](https://example.com/a?b=1&c=2)"),
    '<p><a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer nofollow" target="_blank">docs</a></p>'
  );
  for (const bad of ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<script>x</script>", "vbscript:x", "/relative", "file:///etc/passwd"]) {
    const out = html(`[click](${bad})`);
    assert.ok(!out.includes("<a"), out);
    assert.ok(out.includes("click"), out);
  }
});

test("bare and angle-bracket URLs become links; trailing punctuation stays text", () => {
  assert.equal(
    html("see https://example.com/x."),
    '<p>see <a href="https://example.com/x" rel="noopener noreferrer nofollow" target="_blank">https://example.com/x</a>.</p>'
  );
  assert.equal(
    html("<http://a.b/c>"),
    '<p><a href="http://a.b/c" rel="noopener noreferrer nofollow" target="_blank">http://a.b/c</a></p>'
  );
  assert.equal(html("javascript:alert(1)"), "<p>javascript:alert(1)</p>");
});

test("safeHref", () => {
  assert.equal(safeHref("https://x.org"), "https://x.org/");
  assert.equal(safeHref(" http://x.org/a "), "http://x.org/a");
  assert.equal(safeHref("javascript:alert(1)"), null);
  assert.equal(safeHref("https://"), null);
  assert.equal(safeHref("//x.org"), null);
});

test("bullet and numbered lists", () => {
  assert.equal(html("- a\n- b\n* c"), "<ul><li>a</li><li>b</li></ul><ul><li>c</li></ul>");
  assert.equal(html("1. one\n2. two"), "<ol><li>one</li><li>two</li></ol>");
  assert.equal(html("3) three\n4) four"), '<ol start="3"><li>three</li><li>four</li></ol>');
  assert.equal(html("text\n- item"), "<p>text</p><ul><li>item</li></ul>");
});

test("nested lists, including the 2-space indent models like", () => {
  assert.equal(html("1. one\n   - a\n   - b\n2. two"), "<ol><li>one<ul><li>a</li><li>b</li></ul></li><li>two</li></ol>");
  assert.equal(html("1. one\n  - a\n2. two"), "<ol><li>one<ul><li>a</li></ul></li><li>two</li></ol>");
  assert.equal(html("- a\n    - b\n        - c"), "<ul><li>a<ul><li>b<ul><li>c</li></ul></li></ul></li></ul>");
});

test("loose lists keep paragraphs; item continuation lines", () => {
  assert.equal(html("- a\n\n- b"), "<ul><li><p>a</p></li><li><p>b</p></li></ul>");
  assert.equal(html("- a\n  more\n- b"), "<ul><li>a<br>more</li><li>b</li></ul>");
});

test("fenced code blocks keep text verbatim", () => {
  const md = "```python\nif a < b and c > d:\n    print(\"<b>&amp;</b>\")\n```\nafter";
  assert.deepEqual(parseMarkdown(md)[0], {
    type: "code",
    lang: "python",
    text: 'if a < b and c > d:\n    print("<b>&amp;</b>")',
    closed: true,
  });
  assert.equal(
    html(md),
    '<pre data-lang="python"><code class="language-python">if a &lt; b and c &gt; d:\n    print("&lt;b&gt;&amp;amp;&lt;/b&gt;")</code></pre><p>after</p>'
  );
});

test("an unclosed fence (still streaming) is code to the end", () => {
  assert.deepEqual(parseMarkdown("intro\n```js\nlet x = 1;\nlet *y* = 2"), [
    { type: "paragraph", children: [text("intro")] },
    { type: "code", lang: "js", text: "let x = 1;\nlet *y* = 2", closed: false },
  ]);
});

test("tilde fences and a fence inside a list item", () => {
  assert.equal(html("~~~\n```\n~~~"), "<pre><code>```</code></pre>");
  assert.equal(html("1. run:\n   ```sh\n   ls -l\n   ```\n2. done"), '<ol><li>run:<pre data-lang="sh"><code class="language-sh">ls -l</code></pre></li><li>done</li></ol>');
});

test("a hostile language tag is not put into attributes", () => {
  assert.equal(html('```"><img src=x>\nx\n```'), "<pre><code>x</code></pre>");
});

test("quotes, rules, tables", () => {
  assert.equal(html("> a\n> b"), "<blockquote><p>a<br>b</p></blockquote>");
  assert.equal(html("a\n\n---\n\nb"), "<p>a</p><hr><p>b</p>");
  assert.equal(
    html("| a | b |\n|---|--:|\n| 1 | **2** |"),
    '<div class="table-wrap"><table><thead><tr><th>a</th><th class="align-right">b</th></tr></thead><tbody><tr><td>1</td><td class="align-right"><strong>2</strong></td></tr></tbody></table></div>'
  );
});

test("HTML in the text is text: no element is ever made from it", () => {
  const evil = '<img src=x onerror=alert(1)> <script>alert(2)</script> <a href="javascript:x">y</a> <b>b</b>';
  for (const md of [evil, "**" + evil + "**", "- " + evil, "```\n" + evil + "\n```", "`" + evil + "`", "# " + evil]) {
    const frag = renderMarkdown(md, createDocument());
    const tags = tagsIn({ childNodes: frag.childNodes });
    for (const bad of ["img", "script", "a", "b"]) assert.ok(!tags.includes(bad), `${bad} made from ${md}: ${tags}`);
    assert.ok(frag.textContent.includes("<img src=x onerror=alert(1)>"), md);
  }
});

test("parseInline returns plain data", () => {
  assert.deepEqual(parseInline("a **b** `c`"), [text("a "), { type: "strong", children: [text("b")] }, text(" "), { type: "code", text: "c" }]);
});

test("re-parsing a growing reply never throws (streaming prefixes)", () => {
  const reply =
    "Here is a list:\n\n1. **First** item with `code`\n2. Second [link](https://x.org)\n   - nested\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n> done ~~x~~ ***y***";
  for (let i = 0; i <= reply.length; i++) {
    const frag = renderMarkdown(reply.slice(0, i), createDocument());
    assert.equal(typeof serialize(frag), "string");
  }
});

test("![alt](url) is a link to the image, never an <img>, with no stray !", () => {
  assert.equal(
    html("see ![a cat](https://example.com/cat.png) here"),
    '<p>see <a href="https://example.com/cat.png" rel="noopener noreferrer nofollow" target="_blank" class="image-link" title="Image (not loaded here): https://example.com/cat.png">a cat</a> here</p>'
  );
  // no alt text: the address is the label; an unsafe target leaves only the words
  assert.match(html("![](https://example.com/x.png)"), /<a [^>]*>https:\/\/example\.com\/x\.png<\/a>/);
  assert.equal(html("![pic](javascript:alert(1))"), "<p>pic</p>");
  assert.equal(html("![pic](data:image/png;base64,AAAA)"), "<p>pic</p>");
  assert.doesNotMatch(html("![x](https://e.com/x.png)"), /<img|!/);
  // a lone "!" before a bracket that is not a link stays text
  assert.equal(html("wow![not a link]"), "<p>wow![not a link]</p>");
});
