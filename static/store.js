// Conversations as plain data: parse, title, search, history, fork, export.
//
// Pure: no DOM, no storage, no fetch. chat.js keeps the chats in localStorage
// (one key per chat) and calls these; tests/js/store.test.mjs runs them under node.

export const CHAT_PREFIX = "chatsvc.chat.";

/** An empty conversation. */
export function newChat(id, now) {
  return { id, title: "", system: "", created: now, updated: now, messages: [] };
}

const isString = (v) => typeof v === "string";

/** A chat from its stored JSON, or null if it is not one (the entry is then left alone). */
export function parseChat(raw) {
  let chat;
  try {
    chat = JSON.parse(raw);
  } catch {
    return null;
  }
  if (!chat || typeof chat !== "object" || !isString(chat.id) || !Array.isArray(chat.messages)) return null;
  chat.title = isString(chat.title) ? chat.title : "";
  chat.system = isString(chat.system) ? chat.system : "";
  chat.messages = chat.messages.filter((m) => m && isString(m.role) && isString(m.content));
  for (const m of chat.messages) {
    if (m.images !== undefined && !(Array.isArray(m.images) && m.images.every(isString))) delete m.images;
    if (m.toolCalls !== undefined && !Array.isArray(m.toolCalls)) delete m.toolCalls;
  }
  return chat;
}

/** Replies that were streaming when the page went away; returns whether any were. */
export function markInterrupted(chat) {
  let changed = false;
  for (const m of chat.messages) {
    if (m.status === "streaming") {
      m.status = "interrupted";
      m.error = "The page was closed or reloaded before this reply finished; the text received so far is kept.";
      changed = true;
    }
  }
  return changed;
}

/** The first line of the first message, shortened for the list of chats. */
export function titleFrom(text) {
  const line = String(text).trim().split("\n")[0].trim();
  return line.length > 60 ? line.slice(0, 57).trimEnd() + "…" : line || "New chat";
}

/** Newest first. */
export function sortChats(chats) {
  return [...chats].sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

/** The chats whose title or any message holds every word of the query (any case). */
export function searchChats(chats, query) {
  const words = String(query).toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return [...chats];
  return chats.filter((chat) => {
    const text = [chat.title, chat.system, ...chat.messages.map((m) => m.content)].join("\n").toLowerCase();
    return words.every((w) => text.includes(w));
  });
}

/**
 * The messages to send for the next reply: the system prompt, then every user
 * message and every reply with text (a stopped or failed reply keeps its
 * partial text, so the model sees what the user saw). Images and tool calls
 * go back as Ollama takes them.
 */
export function historyFor(chat) {
  const out = [];
  if (chat.system.trim()) out.push({ role: "system", content: chat.system });
  for (const m of chat.messages) {
    if (m.role !== "user" && m.role !== "assistant") continue;
    if (m.status === "streaming") continue;
    const hasTools = Array.isArray(m.toolCalls) && m.toolCalls.length > 0;
    if (!m.content && !hasTools && !(m.images && m.images.length)) continue;
    const out1 = { role: m.role, content: m.content };
    if (m.images && m.images.length) out1.images = m.images;
    if (hasTools) out1.tool_calls = m.toolCalls;
    out.push(out1);
  }
  return out;
}

/**
 * Edit-and-resend: a new chat holding the messages before `index`, then the
 * user's message at `index` with its new text. The original chat is kept as it was.
 */
export function forkChat(chat, index, text, id, now) {
  const edited = chat.messages[index];
  if (!edited || edited.role !== "user") throw new Error("only a user message can be edited");
  const messages = chat.messages.slice(0, index).map((m) => ({ ...m }));
  const user = { role: "user", content: text, time: now };
  if (edited.images) {
    user.images = edited.images;
    user.imageNames = edited.imageNames;
  }
  messages.push(user);
  return { id, title: chat.title, system: chat.system, created: now, updated: now, messages, forkedFrom: chat.id };
}

/** The conversation as Markdown: what each side wrote, verbatim, under a heading. */
export function toMarkdown(chat) {
  const parts = [`# ${chat.title || "New chat"}`];
  if (chat.system.trim()) parts.push(`## System\n\n${chat.system}`);
  for (const m of chat.messages) {
    const who = m.role === "user" ? "You" : m.model || "Assistant";
    let text = m.content;
    if (m.imageNames && m.imageNames.length) text = `(attached: ${m.imageNames.join(", ")})\n\n` + text;
    if (m.thinking) text = m.thinking.split("\n").map((l) => "> " + l).join("\n") + "\n\n" + text;
    if (m.error) text += `\n\n*${m.error}*`;
    parts.push(`## ${who}\n\n${text}`);
  }
  return parts.join("\n\n") + "\n";
}

/** The conversation as JSON: the stored chat itself, indented. */
export function toJSON(chat) {
  return JSON.stringify(chat, null, 2) + "\n";
}

/** A file name for an export: the title's words, safe on every system. */
export function exportName(chat, ext) {
  const base = (chat.title || "chat")
    .normalize("NFKD")
    .replace(/[^\w\s-]/g, "")
    .trim()
    .replace(/\s+/g, "-")
    .slice(0, 60);
  return `${base || "chat"}.${ext}`;
}
