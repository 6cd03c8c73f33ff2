// What chatsvc's answers mean to a person: error sentences, model labels,
// vision capability, and the parts of one streamed chunk.
//
// Pure: no DOM, no fetch. Used by chat.js; tested by tests/js/api.test.mjs.

/** Capitalise, and end with a full stop unless it already ends a sentence. */
export function sentence(text) {
  const t = String(text).trim();
  if (!t) return "";
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?…]$/.test(s) ? s : s + ".";
}

/** The `error` of chatsvc's `{"error": …}` body, or the start of a body that is not one. */
export function serverMessage(text) {
  try {
    const data = JSON.parse(text);
    if (data && typeof data.error === "string") return data.error;
    if (data && data.error && typeof data.error.message === "string") return data.error.message;
  } catch {
    /* not JSON: the raw text */
  }
  return String(text).trim().slice(0, 300);
}

const FALLBACK = {
  400: "The server could not accept this request.",
  403: "This server does not allow that model.",
  404: "That model is not on the server.",
  429: "Too many replies are streaming for you at once.",
  502: "The model server answered with an error.",
  503: "The server cannot answer right now.",
  504: "The model did not start answering in time.",
};

/**
 * One voice for every non-2xx answer: a plain sentence built from the status
 * and the server's own message, never a second sentence saying it again.
 * 401's message is for curl users ("send Authorization: Bearer"), so the
 * page says what it means for a person, and then asks for the key.
 */
export function errorText(status, message, retryAfter) {
  const msg = String(message || "").trim();
  if (status === 401) {
    return /not valid|invalid/i.test(msg) ? "This server did not accept the saved API key." : "This server needs an API key.";
  }
  if (status === 413) return "This conversation is too long for the server to accept; start a new chat to go on.";
  let text;
  if (status === 400 && msg) text = sentence(`the server could not accept this request: ${msg}`);
  else if (status === 502 && msg) text = sentence(`the model server failed: ${msg}`);
  else if (msg) text = sentence(msg);
  else text = FALLBACK[status] || `The server answered with HTTP ${status}.`;
  if ((status === 429 || status === 503 || status === 504) && !/try again/i.test(text)) {
    text += /^\d+$/.test(retryAfter || "") ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
  }
  return text;
}

/** "llama3.2:latest" reads as "llama3.2", as `ollama run` accepts it. */
export function shortName(name) {
  return String(name).replace(/:latest$/, "");
}

/** The models of an /api/tags answer: name, and a label with size and quantisation. */
export function modelsFrom(tags) {
  const out = [];
  for (const m of (tags && tags.models) || []) {
    const name = m && (m.name || m.model);
    if (typeof name !== "string" || !name) continue;
    const d = (m.details && typeof m.details === "object" && m.details) || {};
    const extra = [d.parameter_size, d.quantization_level].filter((x) => typeof x === "string" && x);
    out.push({ name, label: shortName(name) + (extra.length ? ` · ${extra.join(" · ")}` : "") });
  }
  return out;
}

/**
 * Whether a model takes images, from its /api/show answer: newer Ollama lists
 * "vision" in capabilities; older vision models have a "clip" or "mllama"
 * projector among their families.
 */
export function isVision(show) {
  if (!show || typeof show !== "object") return false;
  if (Array.isArray(show.capabilities)) return show.capabilities.includes("vision");
  const families = (show.details && show.details.families) || [];
  return Array.isArray(families) && families.some((f) => f === "clip" || f === "mllama");
}

/** The base64 payload of a data: URL (what FileReader.readAsDataURL gives). */
export function base64OfDataURL(url) {
  const comma = String(url).indexOf(",");
  return comma === -1 ? "" : String(url).slice(comma + 1);
}

/** What one /api/chat chunk carries: text, thinking, tool calls, whether it is the last. */
export function chunkParts(obj) {
  const m = obj.message && typeof obj.message === "object" ? obj.message : {};
  return {
    content: typeof m.content === "string" ? m.content : typeof obj.response === "string" ? obj.response : "",
    thinking: typeof m.thinking === "string" ? m.thinking : typeof obj.thinking === "string" ? obj.thinking : "",
    toolCalls: Array.isArray(m.tool_calls) ? m.tool_calls.filter((c) => c && typeof c === "object") : [],
    done: obj.done === true,
  };
}

/** A tool call as one line a person can read: name(arguments as JSON). */
export function toolCallText(call) {
  const fn = (call && call.function) || {};
  const name = typeof fn.name === "string" && fn.name ? fn.name : "(unnamed tool)";
  let args = fn.arguments;
  if (typeof args !== "string") args = JSON.stringify(args === undefined ? {} : args);
  return `${name}(${args})`;
}

/**
 * Server-Sent Events, decoded incrementally: text in, {id, event, data} out.
 * The id carries over from the last event that set one, as EventSource's
 * lastEventId does; comments (": ping") and retry lines are skipped.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.id = "";
    this.type = "";
    this.data = [];
  }

  push(text) {
    this.buffer += text;
    const out = [];
    let start = 0;
    let end;
    while ((end = this.buffer.indexOf("\n", start)) !== -1) {
      const line = this.buffer.slice(start, end).replace(/\r$/, "");
      start = end + 1;
      if (line === "") {
        if (this.data.length) out.push({ id: this.id, event: this.type || "message", data: this.data.join("\n") });
        this.data = [];
        this.type = "";
        continue;
      }
      if (line[0] === ":") continue;
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.type = value;
      else if (field === "id") this.id = value;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }
}

/** Read fetch's body reader and yield each Server-Sent Event once it is complete. */
export async function* readSSE(reader) {
  const decoder = new TextDecoder("utf-8");
  const parser = new SSEParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const event of parser.push(decoder.decode(value, { stream: true }))) yield event;
  }
  for (const event of parser.push(decoder.decode() + "\n")) yield event;
}
