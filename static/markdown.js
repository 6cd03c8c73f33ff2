// A small markdown renderer for model replies.
//
// parseMarkdown(text) turns text into a plain token tree (pure, tested under
// node); renderTokens(tokens, document) builds DOM nodes from it with
// createElement / createTextNode / textContent only, so nothing the model
// writes is ever parsed as HTML. Covered: paragraphs, ATX headings, bullet and
// numbered lists (nested), fenced code blocks, block quotes, rules, simple
// tables, inline code, bold, italic, strikethrough, http(s) links, and images
// as links to them (never loaded). It is forgiving by design: the text is
// often a reply that is still streaming, so an unclosed fence is a code block
// running to the end, and an unclosed `*` or backtick is shown as itself.

const FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+|$)(.*?)(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const LIST_ITEM = /^( *)([-*+]|(\d{1,9})[.)])(?:([ \t]+)(.*))?$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const TABLE_SEP = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;

/** Parse markdown text into an array of block tokens. */
export function parseMarkdown(text) {
  const lines = String(text).replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  return parseBlocks(lines);
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function isBlank(line) {
  return line.trim() === "";
}

function listMarker(line) {
  const m = LIST_ITEM.exec(line);
  if (!m) return null;
  // "-" alone on a line or "1." alone is an empty item; "-foo" never matches.
  const ordered = m[3] !== undefined;
  const spaces = m[4] ? m[4].length : 1;
  return {
    indent: m[1].length,
    ordered,
    start: ordered ? parseInt(m[3], 10) : 1,
    bullet: ordered ? m[2].slice(-1) : m[2],
    // where the item's text begins; over-wide gaps count as one space
    contentIndent: m[1].length + m[2].length + (spaces > 4 ? 1 : spaces),
    text: m[5] === undefined ? "" : (spaces > 4 ? " ".repeat(spaces - 1) : "") + m[5],
  };
}

// Does this line start a block that ends a paragraph?
function startsBlock(line) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    (listMarker(line) !== null && indentOf(line) < 4 && !isBlank(listMarker(line).text))
  );
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    if (s[i] === "\\" && s[i + 1] === "|") {
      cur += "|";
      i++;
    } else if (s[i] === "|") {
      cells.push(cur.trim());
      cur = "";
    } else {
      cur += s[i];
    }
  }
  cells.push(cur.trim());
  return cells;
}

function parseBlocks(lines) {
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i++;
      continue;
    }

    const fence = FENCE.exec(line);
    if (fence) {
      const [, pad, marker, lang] = fence;
      const body = [];
      let closed = false;
      i++;
      while (i < lines.length) {
        const l = lines[i];
        const t = l.trim();
        if (indentOf(l) < 4 && t.length >= marker.length && t === marker[0].repeat(t.length)) {
          closed = true;
          i++;
          break;
        }
        // drop up to the fence's own indentation from each content line
        body.push(l.slice(Math.min(pad.length, indentOf(l))));
        i++;
      }
      blocks.push({ type: "code", lang, text: body.join("\n"), closed });
      continue;
    }

    const heading = HEADING.exec(line);
    if (heading) {
      blocks.push({ type: "heading", level: heading[1].length, children: parseInline(heading[2]) });
      i++;
      continue;
    }

    if (RULE.test(line)) {
      blocks.push({ type: "rule" });
      i++;
      continue;
    }

    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && !isBlank(lines[i])) {
        const q = QUOTE.exec(lines[i]);
        if (q) inner.push(q[1]);
        else if (inner.length && !startsBlock(lines[i])) inner.push(lines[i]); // lazy continuation
        else break;
        i++;
      }
      blocks.push({ type: "quote", children: parseBlocks(inner) });
      continue;
    }

    const marker = listMarker(line);
    if (marker) {
      const parsed = parseList(lines, i, marker);
      blocks.push(parsed.list);
      i = parsed.next;
      continue;
    }

    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const header = splitRow(line);
      const align = splitRow(lines[i + 1]).map((c) =>
        c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : ""
      );
      const rows = [];
      i += 2;
      while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) {
        rows.push(splitRow(lines[i]).map(parseInline));
        i++;
      }
      blocks.push({ type: "table", align, header: header.map(parseInline), rows });
      continue;
    }

    // paragraph: runs until a blank line or the start of another block
    const para = [line.trim()];
    i++;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) {
      para.push(lines[i].trim());
      i++;
    }
    blocks.push({ type: "paragraph", children: parseInline(para.join("\n")) });
  }
  return blocks;
}

function parseList(lines, i, first) {
  const list = { type: "list", ordered: first.ordered, start: first.start, loose: false, items: [] };
  let marker = first;
  let sawBlank = false;
  while (marker && marker.ordered === first.ordered && marker.bullet === first.bullet) {
    const itemLines = [marker.text];
    i++;
    let blankInside = false;
    while (i < lines.length) {
      const l = lines[i];
      if (isBlank(l)) {
        // a blank line belongs to the item only if an indented line follows
        let j = i + 1;
        while (j < lines.length && isBlank(lines[j])) j++;
        if (j < lines.length && indentOf(lines[j]) > marker.indent && indentOf(lines[j]) >= Math.min(marker.contentIndent, marker.indent + 2)) {
          for (; i < j; i++) itemLines.push("");
          blankInside = true;
          continue;
        }
        break;
      }
      const ind = indentOf(l);
      // Nested content: anything indented past this item's marker. Models
      // often indent sub-lists by 2 under "1." whose text starts at 3, so be
      // lenient instead of requiring the full content indent.
      if (ind > marker.indent && (ind >= marker.contentIndent || listMarker(l) || ind >= marker.indent + 2)) {
        itemLines.push(l.slice(Math.min(ind, marker.contentIndent)));
        i++;
        continue;
      }
      if (!startsBlock(l) && !listMarker(l) && itemLines.length && !isBlank(itemLines[itemLines.length - 1])) {
        itemLines.push(l.trim()); // lazy paragraph continuation
        i++;
        continue;
      }
      break;
    }
    const children = parseBlocks(itemLines);
    if (blankInside && children.length > 1) list.loose = true;
    list.items.push({ children });
    if (sawBlank) list.loose = true;

    // next item? skip blank lines between items
    let j = i;
    while (j < lines.length && isBlank(lines[j])) j++;
    const next = j < lines.length ? listMarker(lines[j]) : null;
    if (next && next.indent <= first.indent + 3 && next.ordered === first.ordered && next.bullet === first.bullet) {
      sawBlank = j > i;
      i = j;
      marker = next;
    } else {
      marker = null;
    }
  }
  return { list, next: i };
}

// ---------------------------------------------------------------- inline

const PUNCT = /[!-/:-@[-`{-~]/;

function isSpace(ch) {
  return ch === undefined || /\s/.test(ch);
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

/** Return the safe href for a link target, or null if it must not be a link. */
export function safeHref(url) {
  const s = String(url).trim();
  if (!/^https?:\/\//i.test(s)) return null;
  try {
    const u = new URL(s);
    if (u.protocol !== "http:" && u.protocol !== "https:") return null;
    return u.href;
  } catch {
    return null;
  }
}

/** Parse inline markdown into tokens: text, br, code, strong, em, del, link. */
export function parseInline(text) {
  const out = [];
  let buf = "";
  const flush = () => {
    if (buf) {
      linkifyInto(buf, out);
      buf = "";
    }
  };
  let i = 0;
  const n = text.length;
  while (i < n) {
    const ch = text[i];

    if (ch === "\\" && i + 1 < n && PUNCT.test(text[i + 1])) {
      buf += text[i + 1];
      i += 2;
      continue;
    }

    if (ch === "\n") {
      flush();
      out.push({ type: "br" });
      i++;
      continue;
    }

    if (ch === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const close = findBacktickRun(text, i + run, run);
      if (close === -1) {
        buf += "`".repeat(run);
        i += run;
        continue;
      }
      let code = text.slice(i + run, close).replace(/\n/g, " ");
      if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ") && code.trim()) code = code.slice(1, -1);
      flush();
      out.push({ type: "code", text: code });
      i = close + run;
      continue;
    }

    if (ch === "!" && text[i + 1] === "[") {
      // ![alt](url): an image is never loaded (the page's policy forbids other
      // origins, and a model must not make the browser fetch anything); it
      // becomes a link to the image, labelled with its alt text, and the "!" goes.
      const link = matchLink(text, i + 1);
      if (link) {
        flush();
        const href = safeHref(link.url);
        const label = link.label.trim() ? parseInline(link.label) : [{ type: "text", text: link.url || "image" }];
        if (href) out.push({ type: "link", href, image: true, children: label });
        else out.push(...label);
        i = link.end;
        continue;
      }
    }

    if (ch === "[") {
      const link = matchLink(text, i);
      if (link) {
        flush();
        const children = parseInline(link.label);
        const href = safeHref(link.url);
        if (href) out.push({ type: "link", href, children });
        else out.push(...children); // not http(s): keep the words, drop the target
        i = link.end;
        continue;
      }
    }

    if (ch === "<") {
      const m = /^<(https?:\/\/[^\s<>]+)>/i.exec(text.slice(i));
      if (m && safeHref(m[1])) {
        flush();
        out.push({ type: "link", href: safeHref(m[1]), children: [{ type: "text", text: m[1] }] });
        i += m[0].length;
        continue;
      }
    }

    if (ch === "*" || ch === "_" || ch === "~") {
      const em = matchEmphasis(text, i);
      if (em) {
        flush();
        out.push(em.token);
        i = em.end;
        continue;
      }
      let run = 1;
      while (text[i + run] === ch) run++;
      buf += ch.repeat(run);
      i += run;
      continue;
    }

    buf += ch;
    i++;
  }
  flush();
  return out;
}

function findBacktickRun(text, from, len) {
  let i = from;
  while ((i = text.indexOf("`", i)) !== -1) {
    let run = 1;
    while (text[i + run] === "`") run++;
    if (run === len) return i;
    i += run;
  }
  return -1;
}

function matchLink(text, i) {
  // [label](url "optional title") with balanced brackets in the label
  let depth = 0;
  let j = i;
  for (; j < text.length; j++) {
    if (text[j] === "\\") {
      j++;
      continue;
    }
    if (text[j] === "[") depth++;
    else if (text[j] === "]" && --depth === 0) break;
  }
  if (j >= text.length || text[j + 1] !== "(") return null;
  const m = /^\(\s*<?([^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/.exec(text.slice(j + 1));
  if (!m) return null;
  return { label: text.slice(i + 1, j), url: m[1], end: j + 1 + m[0].length };
}

function matchEmphasis(text, i) {
  const ch = text[i];
  let run = 1;
  while (text[i + run] === ch) run++;
  if (ch === "~" && run !== 2) return null;
  const before = text[i - 1];
  // "_" inside a word (snake_case) is never emphasis
  if (ch === "_" && isWordChar(before)) return null;
  const tries = ch === "~" ? [2] : run >= 3 ? [3, 2, 1] : run === 2 ? [2, 1] : [1];
  for (const len of tries) {
    if (isSpace(text[i + len])) continue; // an opener must touch its text
    const delim = ch.repeat(len);
    let j = i + len + 1; // at least one character inside
    while ((j = text.indexOf(delim, j)) !== -1) {
      const closeRunStart = j;
      let closeRunEnd = j;
      while (text[closeRunEnd] === ch) closeRunEnd++;
      const closeRun = closeRunEnd - closeRunStart;
      const okBefore = !isSpace(text[j - 1]);
      const okAfter = ch !== "_" || !isWordChar(text[closeRunEnd]);
      if (okBefore && okAfter && (closeRun === len || (closeRun > len && len !== 1))) {
        // a longer closing run: use its last `len` characters
        const close = closeRunEnd - len;
        const inner = text.slice(i + len, close);
        if (inner.trim() === "" || inner.includes("\n\n")) break;
        const children = parseInline(inner);
        const token =
          ch === "~"
            ? { type: "del", children }
            : len === 3
              ? { type: "strong", children: [{ type: "em", children }] }
              : { type: len === 2 ? "strong" : "em", children };
        return { token, end: close + len };
      }
      j = closeRunEnd;
    }
  }
  return null;
}

// Bare http(s) URLs in plain text become links; trailing punctuation stays text.
function linkifyInto(text, out) {
  const re = /\bhttps?:\/\/[^\s<>"]+/gi;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    let url = m[0];
    while (/[.,:;!?'")\]*_]$/.test(url)) {
      if (url.endsWith(")") && (url.match(/\(/g) || []).length >= (url.match(/\)/g) || []).length) break;
      url = url.slice(0, -1);
    }
    const href = safeHref(url);
    if (!href) continue;
    if (m.index > last) out.push({ type: "text", text: text.slice(last, m.index) });
    out.push({ type: "link", href, children: [{ type: "text", text: url }] });
    last = m.index + url.length;
    re.lastIndex = last;
  }
  if (last < text.length) out.push({ type: "text", text: text.slice(last) });
}

// ---------------------------------------------------------------- DOM

/** Build DOM nodes for parsed tokens; returns a DocumentFragment. */
export function renderTokens(blocks, doc) {
  const frag = doc.createDocumentFragment();
  for (const block of blocks) frag.appendChild(renderBlock(block, doc, false));
  return frag;
}

/** parseMarkdown + renderTokens. */
export function renderMarkdown(text, doc) {
  return renderTokens(parseMarkdown(text), doc);
}

function el(doc, tag, className) {
  const node = doc.createElement(tag);
  if (className) node.className = className;
  return node;
}

function renderBlock(block, doc, tight) {
  switch (block.type) {
    case "heading": {
      const h = el(doc, "h" + block.level);
      appendInline(h, block.children, doc);
      return h;
    }
    case "paragraph": {
      if (tight) {
        const frag = doc.createDocumentFragment();
        appendInline(frag, block.children, doc);
        return frag;
      }
      const p = el(doc, "p");
      appendInline(p, block.children, doc);
      return p;
    }
    case "code": {
      const pre = el(doc, "pre");
      const code = el(doc, "code");
      if (block.lang && /^[\w+#.-]+$/.test(block.lang)) {
        code.className = "language-" + block.lang;
        pre.setAttribute("data-lang", block.lang);
      }
      code.textContent = block.text;
      pre.appendChild(code);
      return pre;
    }
    case "rule":
      return el(doc, "hr");
    case "quote": {
      const q = el(doc, "blockquote");
      for (const child of block.children) q.appendChild(renderBlock(child, doc, false));
      return q;
    }
    case "list": {
      const list = el(doc, block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.setAttribute("start", String(block.start));
      for (const item of block.items) {
        const li = el(doc, "li");
        item.children.forEach((child, k) => {
          // in a tight list the item's text sits directly in the <li>
          const inline = !block.loose && child.type === "paragraph";
          if (inline && k > 0) li.appendChild(el(doc, "br"));
          li.appendChild(renderBlock(child, doc, inline));
        });
        list.appendChild(li);
      }
      return list;
    }
    case "table": {
      const wrap = el(doc, "div", "table-wrap");
      const table = el(doc, "table");
      const thead = el(doc, "thead");
      const tr = el(doc, "tr");
      block.header.forEach((cell, k) => tr.appendChild(tableCell(doc, "th", cell, block.align[k])));
      thead.appendChild(tr);
      table.appendChild(thead);
      const tbody = el(doc, "tbody");
      for (const row of block.rows) {
        const r = el(doc, "tr");
        for (let k = 0; k < block.header.length; k++) r.appendChild(tableCell(doc, "td", row[k] || [], block.align[k]));
        tbody.appendChild(r);
      }
      table.appendChild(tbody);
      wrap.appendChild(table);
      return wrap;
    }
    default:
      return doc.createTextNode("");
  }
}

function tableCell(doc, tag, children, align) {
  const cell = el(doc, tag);
  if (align) cell.className = "align-" + align;
  appendInline(cell, children, doc);
  return cell;
}

function appendInline(parent, tokens, doc) {
  for (const t of tokens) {
    switch (t.type) {
      case "text":
        parent.appendChild(doc.createTextNode(t.text));
        break;
      case "br":
        parent.appendChild(el(doc, "br"));
        break;
      case "code": {
        const c = el(doc, "code");
        c.textContent = t.text;
        parent.appendChild(c);
        break;
      }
      case "strong":
      case "em":
      case "del": {
        const e = el(doc, t.type);
        appendInline(e, t.children, doc);
        parent.appendChild(e);
        break;
      }
      case "link": {
        const href = safeHref(t.href);
        if (!href) {
          appendInline(parent, t.children, doc);
          break;
        }
        const a = el(doc, "a");
        a.setAttribute("href", href);
        a.setAttribute("rel", "noopener noreferrer nofollow");
        a.setAttribute("target", "_blank");
        if (t.image) {
          a.className = "image-link";
          a.setAttribute("title", "Image (not loaded here): " + href);
        }
        appendInline(a, t.children, doc);
        parent.appendChild(a);
        break;
      }
      default:
        break;
    }
  }
}
