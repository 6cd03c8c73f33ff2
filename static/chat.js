// The chat page: conversations in localStorage, streamed replies from
// POST /api/chat (NDJSON) read with fetch + getReader, stop via AbortController.
//
// Everything the user or the model writes reaches the DOM through textContent
// or markdown.js (createElement only); nothing here parses HTML.

import { readNDJSON } from "./ndjson.js";
import { renderMarkdown } from "./markdown.js";

const config = readConfig();
const CHAT_PREFIX = "chatsvc.chat.";
const LS_MODEL = "chatsvc.model";
const LS_KEY = "chatsvc.apiKey";
const LS_CURRENT = "chatsvc.current";
const SAVE_EVERY_MS = 1000;

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  newChat: $("new-chat"),
  chatList: $("chat-list"),
  keyButton: $("key-button"),
  title: $("chat-title"),
  model: $("model"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerRetry: $("banner-retry"),
  transcript: $("transcript"),
  messages: $("messages"),
  systemBox: $("system-box"),
  systemState: $("system-state"),
  system: $("system"),
  form: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  live: $("live-status"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyMessage: $("key-message"),
  keyInput: $("key-input"),
  keyCancel: $("key-cancel"),
};

const state = {
  chats: new Map(), // id -> chat
  current: null, // the chat on screen (may be unsaved while empty)
  stream: null, // the reply being streamed, see startReply()
  keyWaiters: [], // {retry, cancel} to run when the key dialog closes
  bannerRetry: null,
  modelsLoading: null, // the /api/tags request in flight
  modelsError: null, // why the model list is unavailable, in words
  leaving: false, // the page is being unloaded
};

// ---------------------------------------------------------------- config

function readConfig() {
  const defaults = { chatUrl: "/api/chat", tagsUrl: "/api/tags" };
  try {
    return Object.assign(defaults, JSON.parse($("config").textContent));
  } catch {
    return defaults; // page opened without the Flask template (layout preview)
  }
}

// ---------------------------------------------------------------- storage

const storage = {
  get(key) {
    try {
      return localStorage.getItem(key);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, value);
      return true;
    } catch {
      return false;
    }
  },
  remove(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      /* storage disabled: nothing to remove */
    }
  },
  keys() {
    const out = [];
    try {
      for (let i = 0; i < localStorage.length; i++) out.push(localStorage.key(i));
    } catch {
      /* storage disabled */
    }
    return out;
  },
};

// One key per chat, so two tabs writing different chats never overwrite each other.
function parseChat(raw) {
  try {
    const chat = JSON.parse(raw);
    if (!chat || typeof chat.id !== "string" || !Array.isArray(chat.messages)) return null;
    chat.title = typeof chat.title === "string" ? chat.title : "";
    chat.system = typeof chat.system === "string" ? chat.system : "";
    chat.messages = chat.messages.filter((m) => m && typeof m.role === "string" && typeof m.content === "string");
    return chat;
  } catch {
    return null;
  }
}

function loadChats() {
  for (const key of storage.keys()) {
    if (!key || !key.startsWith(CHAT_PREFIX)) continue;
    const chat = parseChat(storage.get(key));
    if (!chat) continue; // left in place: a broken entry is never deleted for us
    let changed = false;
    for (const m of chat.messages) {
      if (m.status === "streaming") {
        // the page went away while this reply was arriving
        m.status = "interrupted";
        m.error = "The page was closed or reloaded before this reply finished; the text received so far is kept.";
        changed = true;
      }
    }
    state.chats.set(chat.id, chat);
    if (changed) saveChat(chat);
  }
}

function saveChat(chat) {
  if (!chat.messages.length && !chat.system.trim()) return true; // nothing worth keeping yet
  state.chats.set(chat.id, chat);
  const ok = storage.set(CHAT_PREFIX + chat.id, JSON.stringify(chat));
  if (!ok) {
    showBanner("This browser would not save the conversation (storage is full or disabled). Delete old chats to free space.");
    ui.banner.dataset.kind = "storage";
  } else if (ui.banner.dataset.kind === "storage") {
    hideBanner();
  }
  return ok;
}

function removeChat(id) {
  if (state.stream && state.stream.chat.id === id) stopStream();
  state.chats.delete(id);
  storage.remove(CHAT_PREFIX + id);
  if (state.current && state.current.id === id) {
    const next = sortedChats()[0];
    showChat(next || makeChat());
  } else {
    renderChatList();
  }
}

function makeChat() {
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
  const now = Date.now();
  return { id, title: "", system: "", created: now, updated: now, messages: [] };
}

function sortedChats() {
  return [...state.chats.values()].sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0].trim();
  return line.length > 60 ? line.slice(0, 57).trimEnd() + "…" : line || "New chat";
}

// ---------------------------------------------------------------- auth

function authHeaders(headers) {
  const key = storage.get(LS_KEY);
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

/** Show the key form; waiter.retry runs after a key is saved, waiter.cancel if dismissed. */
function requireKey(message, waiter) {
  if (waiter) state.keyWaiters.push(waiter);
  const had = storage.get(LS_KEY);
  ui.keyMessage.textContent =
    (message ? sentence(message) + " " : "") +
    (had ? "The saved key was not accepted; enter a valid one." : "This server needs an API key to chat.");
  if (!ui.keyDialog.open) {
    ui.keyInput.value = "";
    ui.keyDialog.showModal();
  }
  ui.keyInput.focus();
}

function closeKeyDialog(saved) {
  if (ui.keyDialog.open) ui.keyDialog.close();
  const waiters = state.keyWaiters;
  state.keyWaiters = [];
  for (const w of waiters) {
    const fn = saved ? w.retry : w.cancel;
    if (fn) fn();
  }
  focusInput(true);
}

// ---------------------------------------------------------------- models

/** Fill the model picker from /api/tags; concurrent callers share one request. */
function loadModels() {
  if (!state.modelsLoading) {
    state.modelsLoading = fetchModels().finally(() => {
      state.modelsLoading = null;
    });
  }
  return state.modelsLoading;
}

async function fetchModels() {
  ui.model.disabled = true;
  state.modelsError = null;
  let res;
  try {
    res = await fetch(config.tagsUrl, { headers: authHeaders({ Accept: "application/json" }), cache: "no-store" });
  } catch {
    modelProblem("Cannot reach chatsvc to list the models. Check that the server is running.");
    return;
  }
  if (res.status === 401) {
    const detail = await errorDetail(res);
    modelProblem("An API key is needed to list the models.");
    state.modelsError = null; // a chat request asks for the key itself
    requireKey(detail, { retry: loadModels });
    return;
  }
  if (!res.ok) {
    modelProblem(await httpErrorMessage(res));
    return;
  }
  let names = [];
  try {
    const data = await res.json();
    names = (data.models || []).map((m) => m && (m.name || m.model)).filter((n) => typeof n === "string" && n);
  } catch {
    modelProblem("chatsvc sent a model list this page could not read.");
    return;
  }
  const remembered = storage.get(LS_MODEL);
  ui.model.replaceChildren();
  if (!names.length) {
    ui.model.appendChild(option("", "No models installed"));
    showBanner("The model server has no models. Pull one with “ollama pull <model>”, then retry.", loadModels);
    return;
  }
  // "llama3.2:latest" reads as "llama3.2", as `ollama run` accepts it
  for (const name of names) ui.model.appendChild(option(name, name.replace(/:latest$/, "")));
  ui.model.value = names.includes(remembered) ? remembered : names[0];
  ui.model.disabled = false;
  if (ui.banner.dataset.kind === "models") hideBanner();
}

function modelProblem(message) {
  state.modelsError = message;
  ui.model.replaceChildren(option("", "Models unavailable"));
  ui.model.disabled = true;
  showBanner(message, loadModels);
  ui.banner.dataset.kind = "models";
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

// ---------------------------------------------------------------- errors

function sentence(text) {
  const t = String(text).trim();
  return t && !/[.!?…]$/.test(t) ? t + "." : t;
}

async function errorDetail(res) {
  try {
    const text = await res.text();
    try {
      const data = JSON.parse(text);
      if (data && typeof data.error === "string") return data.error;
    } catch {
      /* not JSON: fall through to the raw text */
    }
    return text.trim().slice(0, 300);
  } catch {
    return "";
  }
}

/** A sentence a person can act on, for a non-2xx answer from chatsvc. */
async function httpErrorMessage(res) {
  const detail = await errorDetail(res);
  const d = detail ? sentence(detail) : "";
  const retryAfter = res.headers.get("Retry-After");
  const later = retryAfter && /^\d+$/.test(retryAfter) ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
  switch (res.status) {
    case 400:
      return `chatsvc could not accept the request: ${d || "it was malformed."}`;
    case 401:
      return `This server needs an API key. ${d}`.trim();
    case 403:
      return `This model is not allowed on this server. ${d} Pick another model.`.replace(/\s+/g, " ");
    case 404:
      return `${d || "Not found."} Pick another model, or pull it into Ollama first.`;
    case 413:
      return `This conversation is too long for the server to accept. ${d} Start a new chat to continue.`.replace(/\s+/g, " ");
    case 429:
      return `Too many replies are streaming for you at once. ${d}${later}`.replace(/\s+/g, " ");
    case 502:
      return `The model server (Ollama) answered with an error: ${d || "no details."}`;
    case 503:
      return `${d || "chatsvc is unavailable."}${later}`;
    case 504:
      return `The model did not start answering in time. ${d}${later}`.replace(/\s+/g, " ");
    default:
      return `chatsvc answered with HTTP ${res.status}. ${d}`.trim();
  }
}

// ---------------------------------------------------------------- rendering

function renderChatList() {
  const items = [];
  for (const chat of sortedChats()) {
    const li = document.createElement("li");
    li.className = "chat-item";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-open";
    open.textContent = chat.title || "New chat";
    open.title = chat.title || "New chat";
    if (state.current && chat.id === state.current.id) {
      open.setAttribute("aria-current", "true");
      li.classList.add("current");
    }
    open.addEventListener("click", () => {
      showChat(chat);
      closeSidebar();
      focusInput(true);
    });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "chat-delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete chat “${chat.title || "New chat"}”`);
    // two clicks to delete, so a stray tap cannot lose a conversation
    del.addEventListener("click", () => {
      if (del.dataset.armed === "1") {
        removeChat(chat.id);
        return;
      }
      del.dataset.armed = "1";
      del.textContent = "Confirm";
      setTimeout(() => {
        if (del.isConnected) {
          del.dataset.armed = "";
          del.textContent = "Delete";
        }
      }, 4000);
    });
    li.append(open, del);
    items.push(li);
  }
  ui.chatList.replaceChildren(...items);
}

function showChat(chat) {
  state.current = chat;
  storage.set(LS_CURRENT, chat.id);
  ui.title.textContent = chat.title || "New chat";
  document.title = chat.title ? `${chat.title} – chatsvc` : "chatsvc";
  ui.system.value = chat.system;
  updateSystemState();
  ui.systemBox.open = false;
  renderMessages();
  renderChatList();
  scrollToBottom();
}

function renderMessages() {
  const chat = state.current;
  const nodes = [];
  if (state.stream) state.stream.view = null;
  for (const msg of chat.messages) {
    const view = messageView(msg);
    if (state.stream && state.stream.msg === msg) state.stream.view = view;
    nodes.push(view.root);
  }
  if (!nodes.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    const h = document.createElement("p");
    h.className = "empty-title";
    h.textContent = "Start a conversation";
    const p = document.createElement("p");
    p.textContent = "Pick a model above and type a message. Enter sends, Shift+Enter starts a new line. Chats are kept in this browser.";
    empty.append(h, p);
    nodes.push(empty);
  }
  ui.messages.replaceChildren(...nodes);
}

function messageView(msg) {
  const root = document.createElement("article");
  root.className = "msg msg-" + (msg.role === "user" ? "user" : "assistant");
  const who = document.createElement("div");
  who.className = "msg-who";
  // the model's thinking (message.thinking), folded away above its answer
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  const thinkingSummary = document.createElement("summary");
  thinkingSummary.textContent = "Thinking";
  const thinkingBody = document.createElement("div");
  thinkingBody.className = "thinking-body";
  thinking.append(thinkingSummary, thinkingBody);
  const body = document.createElement("div");
  body.className = "msg-body";
  const error = document.createElement("p");
  error.className = "msg-error";
  error.setAttribute("role", "alert");
  const meta = document.createElement("div");
  meta.className = "msg-meta";
  if (msg.role === "user") root.append(who, body, error, meta);
  else root.append(who, thinking, body, error, meta);
  const view = { root, who, thinking, thinkingBody, body, error, meta, rendered: null };
  updateView(view, msg);
  return view;
}

function updateView(view, msg) {
  const isUser = msg.role === "user";
  view.root.dataset.status = msg.status || "";
  view.who.textContent = isUser ? "You" : msg.model || "Assistant";
  if (isUser) {
    if (view.rendered !== msg.content) view.body.textContent = msg.content;
  } else if (view.rendered !== msg.content) {
    view.body.replaceChildren(renderMarkdown(msg.content, document));
  }
  view.rendered = msg.content;
  view.body.hidden = !msg.content;

  view.thinking.hidden = !msg.thinking;
  if (msg.thinking && view.thinkingBody.textContent !== msg.thinking) view.thinkingBody.textContent = msg.thinking;

  view.error.hidden = !msg.error;
  view.error.textContent = msg.error || "";

  if (!isUser) renderMeta(view.meta, msg);
  view.root.setAttribute("aria-busy", msg.status === "streaming" ? "true" : "false");
}

const STATUS_LABEL = {
  stopped: "Stopped",
  failed: "Failed",
  lost: "Connection lost",
  interrupted: "Interrupted",
};

function renderMeta(meta, msg) {
  const parts = [];
  const st = msg.stats || {};
  if (msg.status === "streaming") {
    const dots = document.createElement("span");
    dots.className = "typing";
    dots.textContent = st.ttftMs == null ? "Waiting for the model…" : "Writing…";
    parts.push(dots);
  }
  if (st.ttftMs != null) parts.push(metaItem(`first token ${(st.ttftMs / 1000).toFixed(2)} s`, "stat-ttft"));
  if (st.tps != null) {
    const item = metaItem(`${st.tps.toFixed(1)} tok/s`, "stat-tps");
    if (st.evalCount) item.title = `${st.evalCount} tokens, from the model's own timing`;
    parts.push(item);
  } else if (st.liveTps != null) {
    const item = metaItem(`≈ ${st.liveTps.toFixed(1)} tok/s`, "stat-tps");
    item.title = "Estimated while streaming; the exact figure arrives with the last chunk";
    parts.push(item);
  }
  if (STATUS_LABEL[msg.status]) parts.push(metaItem(STATUS_LABEL[msg.status], "badge badge-" + msg.status));
  const last = state.current && state.current.messages[state.current.messages.length - 1] === msg;
  if (last && STATUS_LABEL[msg.status] && !state.stream) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "button small retry";
    retry.textContent = "Retry";
    retry.addEventListener("click", () => retryReply(state.current, msg));
    parts.push(retry);
  }
  meta.replaceChildren(...parts);
  meta.hidden = parts.length === 0;
}

function metaItem(text, className) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function nearBottom() {
  const t = ui.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollToBottom() {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function updateSystemState() {
  ui.systemState.textContent = ui.system.value.trim() ? "(set)" : "(none)";
}

function showBanner(text, retry) {
  ui.bannerText.textContent = text;
  ui.banner.dataset.kind = "";
  state.bannerRetry = retry || null;
  ui.bannerRetry.hidden = !retry;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.banner.dataset.kind = "";
  state.bannerRetry = null;
}

function setStreamingUI(streaming) {
  ui.send.hidden = streaming;
  ui.stop.hidden = !streaming;
  ui.form.classList.toggle("streaming", streaming);
}

function focusInput(force) {
  if (ui.keyDialog.open) return;
  const active = document.activeElement;
  // don't pull focus away from the system prompt or the model picker
  if (force || !active || active === document.body || active === ui.send || active === ui.stop || active === ui.input) {
    ui.input.focus();
  }
}

function announce(text) {
  ui.live.textContent = text;
}

// ---------------------------------------------------------------- streaming

function historyFor(chat) {
  const out = [];
  if (chat.system.trim()) out.push({ role: "system", content: chat.system });
  for (const m of chat.messages) {
    if (m.role !== "user" && m.role !== "assistant") continue;
    if (m.status === "streaming") continue;
    // stopped or failed replies keep their partial text in the history, so the
    // model sees what the user saw; a reply with no text at all is left out
    if (!m.content) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

function sendMessage(text) {
  if (state.stream) return;
  const chat = state.current;
  chat.messages.push({ role: "user", content: text, time: Date.now() });
  if (!chat.title) {
    chat.title = titleFrom(text);
    ui.title.textContent = chat.title;
    document.title = `${chat.title} – chatsvc`;
  }
  startReply(chat);
}

function retryReply(chat, msg) {
  if (state.stream) return;
  const i = chat.messages.indexOf(msg);
  if (i !== chat.messages.length - 1) return;
  chat.messages.pop();
  startReply(chat);
}

function selectedModel() {
  return ui.model.disabled ? "" : ui.model.value;
}

function startReply(chat) {
  const messages = historyFor(chat);
  const msg = { role: "assistant", content: "", model: selectedModel(), status: "streaming", time: Date.now(), stats: {} };
  chat.messages.push(msg);
  chat.updated = Date.now();
  saveChat(chat);

  const s = {
    chat,
    msg,
    controller: new AbortController(),
    view: null,
    started: performance.now(),
    firstAt: null,
    pieces: 0,
    lastSave: performance.now(),
    frame: 0,
    finished: false,
  };
  state.stream = s;
  setStreamingUI(true);
  if (state.current === chat) {
    renderMessages();
    renderChatList();
    scrollToBottom();
  }
  announce("Waiting for the reply…");
  runStream(s, messages);
}

async function runStream(s, messages) {
  if (!s.msg.model) {
    // no model list yet (it failed, or is still loading): try once more now
    await loadModels();
    if (s.finished) return;
    s.msg.model = selectedModel();
    if (!s.msg.model && state.modelsError) return finish(s, "failed", state.modelsError);
  }
  const body = { messages, stream: true };
  if (s.msg.model) body.model = s.msg.model;
  let res;
  try {
    res = await fetch(config.chatUrl, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "application/x-ndjson" }),
      body: JSON.stringify(body),
      signal: s.controller.signal,
      cache: "no-store",
    });
  } catch {
    if (s.controller.signal.aborted) return finish(s, "stopped");
    return finish(s, "failed", "Cannot reach chatsvc. Check that the server is running and that this device is online, then retry.");
  }
  if (s.finished) return;

  if (res.status === 401) {
    const detail = await errorDetail(res);
    finish(s, "failed", "This server needs an API key. Enter one to send this message.");
    requireKey(detail, { retry: () => retryReply(s.chat, s.msg) });
    return;
  }
  if (!res.ok) return finish(s, "failed", await httpErrorMessage(res));
  if (!res.body) return finish(s, "failed", "This browser cannot read streamed replies.");

  let unreadable = 0;
  try {
    const reader = res.body.getReader();
    for await (const obj of readNDJSON(reader, { onInvalid: () => unreadable++ })) {
      if (s.finished) continue; // stopped, or done already: drain quietly
      if (!obj || typeof obj !== "object") {
        unreadable++;
        continue;
      }
      if ("error" in obj) {
        finish(s, "failed", `The model stopped with an error: ${sentence(String(obj.error))}`);
        continue;
      }
      onChunk(s, obj);
    }
  } catch {
    if (s.controller.signal.aborted) return finish(s, "stopped");
    return finish(s, "lost", "The connection to chatsvc was lost before the reply finished. The text received so far is kept.");
  }
  if (!s.finished) {
    finish(
      s,
      "lost",
      unreadable
        ? "chatsvc sent a reply this page could not read, and it ended early."
        : "The connection to chatsvc was lost before the reply finished. The text received so far is kept."
    );
  }
}

function onChunk(s, obj) {
  const m = obj.message && typeof obj.message === "object" ? obj.message : {};
  const piece = typeof m.content === "string" ? m.content : typeof obj.response === "string" ? obj.response : "";
  const think = typeof m.thinking === "string" ? m.thinking : typeof obj.thinking === "string" ? obj.thinking : "";
  const now = performance.now();
  if ((piece || think) && s.firstAt === null) {
    s.firstAt = now;
    s.msg.stats.ttftMs = Math.round(now - s.started);
    announce("The reply is arriving.");
  }
  if (piece) {
    s.msg.content += piece;
    s.pieces++;
  }
  if (think) s.msg.thinking = (s.msg.thinking || "") + think;
  if (typeof obj.model === "string" && obj.model) s.msg.model = obj.model;
  // Ollama sends about one token per chunk: a fair estimate until the final stats
  if (s.pieces > 1 && now > s.firstAt) s.msg.stats.liveTps = ((s.pieces - 1) * 1000) / (now - s.firstAt);

  if (obj.done === true) {
    if (obj.eval_count > 0 && obj.eval_duration > 0) {
      s.msg.stats.tps = (obj.eval_count / obj.eval_duration) * 1e9;
      s.msg.stats.evalCount = obj.eval_count;
    }
    if (obj.done_reason) s.msg.doneReason = obj.done_reason;
    return finish(s, "done");
  }
  if (now - s.lastSave > SAVE_EVERY_MS) {
    s.lastSave = now;
    saveChat(s.chat);
  }
  scheduleRender(s);
}

// At most one markdown re-render per animation frame, however fast chunks come.
function scheduleRender(s) {
  if (s.frame) return;
  s.frame = requestAnimationFrame(() => {
    s.frame = 0;
    renderStream(s);
  });
}

function renderStream(s) {
  if (!s.view) return; // another chat is on screen
  const stick = nearBottom();
  updateView(s.view, s.msg);
  if (stick) scrollToBottom();
}

function finish(s, status, error) {
  if (s.finished || state.leaving) return;
  s.finished = true;
  if (s.frame) cancelAnimationFrame(s.frame);
  s.frame = 0;
  s.msg.status = status;
  if (error) s.msg.error = error;
  delete s.msg.stats.liveTps;
  if (status !== "done" && s.msg.stats.tps == null && s.pieces > 1 && s.firstAt !== null) {
    // keep a rough rate for a partial reply
    s.msg.stats.liveTps = ((s.pieces - 1) * 1000) / (performance.now() - s.firstAt);
  }
  if (state.stream === s) state.stream = null;
  s.chat.updated = Date.now();
  saveChat(s.chat);
  setStreamingUI(false);
  if (state.current === s.chat) {
    const stick = nearBottom();
    renderMessages(); // also refreshes the Retry button on the last reply
    if (stick) scrollToBottom();
  }
  renderChatList();
  announce(status === "done" ? "Reply complete." : error || STATUS_LABEL[status] || "");
  focusInput(false);
}

function stopStream() {
  const s = state.stream;
  if (!s) return;
  s.controller.abort(); // closes the connection; chatsvc then closes its upstream request
  finish(s, "stopped");
}

// ---------------------------------------------------------------- sidebar

function openSidebar() {
  document.body.classList.add("sidebar-open");
  ui.scrim.hidden = false;
  ui.openSidebar.setAttribute("aria-expanded", "true");
  ui.newChat.focus();
}

function closeSidebar() {
  if (!document.body.classList.contains("sidebar-open")) return;
  document.body.classList.remove("sidebar-open");
  ui.scrim.hidden = true;
  ui.openSidebar.setAttribute("aria-expanded", "false");
}

// ---------------------------------------------------------------- events

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = Math.min(ui.input.scrollHeight, 240) + "px";
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.stream) return;
  const text = ui.input.value;
  if (!text.trim()) return;
  ui.input.value = "";
  autosize();
  sendMessage(text);
  ui.input.focus();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    ui.form.requestSubmit();
  } else if (event.key === "Escape" && state.stream) {
    event.preventDefault();
    stopStream();
  }
});
ui.input.addEventListener("input", autosize);

ui.stop.addEventListener("click", () => {
  stopStream();
  ui.input.focus();
});

ui.newChat.addEventListener("click", () => {
  if (!state.current.messages.length && !state.current.system.trim()) {
    closeSidebar();
    focusInput(true);
    return; // already on an empty chat
  }
  showChat(makeChat());
  closeSidebar();
  focusInput(true);
});

ui.model.addEventListener("change", () => storage.set(LS_MODEL, ui.model.value));

ui.system.addEventListener("input", () => {
  const chat = state.current;
  chat.system = ui.system.value;
  updateSystemState();
  const listed = state.chats.has(chat.id);
  saveChat(chat); // a new chat is kept from its first system prompt on
  if (!listed && state.chats.has(chat.id)) renderChatList();
});

ui.bannerRetry.addEventListener("click", () => {
  const retry = state.bannerRetry;
  hideBanner();
  if (retry) retry();
});

ui.openSidebar.addEventListener("click", openSidebar);
ui.closeSidebar.addEventListener("click", closeSidebar);
ui.scrim.addEventListener("click", closeSidebar);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeSidebar();
});

ui.keyButton.addEventListener("click", () => {
  ui.keyMessage.textContent = storage.get(LS_KEY)
    ? "Replace the API key this browser sends to chatsvc. Leave it empty and save to forget it."
    : "Enter the API key this browser should send to chatsvc.";
  ui.keyInput.value = "";
  ui.keyInput.required = false;
  ui.keyDialog.showModal();
  ui.keyInput.focus();
});

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (key) storage.set(LS_KEY, key);
  else if (!ui.keyInput.required) storage.remove(LS_KEY);
  else return;
  ui.keyInput.required = true;
  ui.keyInput.value = "";
  // a key changed by hand may unlock a model list that failed with 401
  const reloadModels = !state.keyWaiters.length && ui.model.disabled;
  closeKeyDialog(true);
  if (reloadModels) loadModels();
});

ui.keyCancel.addEventListener("click", () => {
  ui.keyInput.required = true;
  closeKeyDialog(false);
});
ui.keyDialog.addEventListener("cancel", (event) => {
  event.preventDefault(); // Escape: close through our path so waiters are told
  ui.keyInput.required = true;
  closeKeyDialog(false);
});

// Save a streaming reply when the page goes away; the next load marks it
// interrupted. The browser then kills the fetch, which must not be recorded as
// a lost connection, hence `leaving`.
function saveStreaming() {
  if (state.stream) saveChat(state.stream.chat);
}
window.addEventListener("pagehide", () => {
  state.leaving = true;
  saveStreaming();
});
window.addEventListener("pageshow", () => {
  state.leaving = false;
});
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") saveStreaming();
  else if (state.stream) scheduleRender(state.stream);
});

// Another tab changed a chat: pick up its copy (never under a running stream).
window.addEventListener("storage", (event) => {
  if (!event.key || !event.key.startsWith(CHAT_PREFIX)) return;
  const id = event.key.slice(CHAT_PREFIX.length);
  if (state.stream && state.stream.chat.id === id) return;
  if (event.newValue === null) {
    state.chats.delete(id);
    if (state.current && state.current.id === id) showChat(sortedChats()[0] || makeChat());
    else renderChatList();
    return;
  }
  const chat = parseChat(event.newValue);
  if (!chat) return;
  state.chats.set(id, chat);
  if (state.current && state.current.id === id) {
    showChat(chat);
  } else {
    renderChatList();
  }
});

// ---------------------------------------------------------------- start

loadChats();
const lastId = storage.get(LS_CURRENT);
showChat(state.chats.get(lastId) || sortedChats()[0] || makeChat());
loadModels();
ui.input.focus();
document.body.dataset.ready = "1"; // tests wait for this
