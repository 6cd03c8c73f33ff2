// The chat page: conversations in localStorage, streamed replies from
// POST /api/chat?resumable=1 (Server-Sent Events, numbered) read with fetch +
// getReader. A cut connection or a reload carries on from GET /api/streams/<id>;
// Stop sends DELETE to it.
// Each chat streams on its own: its own reply, Stop, draft and attachment.
//
// Everything the user or the model writes reaches the DOM through textContent
// or markdown.js (createElement only); nothing here parses HTML.

import { renderMarkdown } from "./markdown.js";
import {
  CHAT_PREFIX,
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
} from "./store.js";
import {
  base64OfDataURL,
  chunkParts,
  errorText,
  isVision,
  modelsFrom,
  readSSE,
  sentence,
  serverMessage,
  shortName,
  toolCallText,
} from "./api.js";

const config = readConfig();
const LS_MODEL = "chatsvc.model";
const LS_KEY = "chatsvc.apiKey";
const LS_CURRENT = "chatsvc.current";
const SAVE_EVERY_MS = 1000;
// Waits before each attempt to pick a cut reply up again; reset once text flows.
const RESUME_BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const LOST_TEXT = "The connection to chatsvc was lost before the reply finished; the text received so far is kept.";
const MAX_IMAGE_BYTES = 8 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  openSidebar: $("open-sidebar"),
  closeSidebar: $("close-sidebar"),
  newChat: $("new-chat"),
  search: $("chat-search"),
  chatList: $("chat-list"),
  keyButton: $("key-button"),
  title: $("chat-title"),
  titleInput: $("title-input"),
  menu: $("chat-menu"),
  rename: $("rename"),
  exportMd: $("export-md"),
  exportJson: $("export-json"),
  model: $("model"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerRetry: $("banner-retry"),
  transcript: $("transcript"),
  messages: $("messages"),
  systemBox: $("system-box"),
  systemState: $("system-state"),
  system: $("system"),
  jump: $("jump"),
  form: $("composer"),
  input: $("input"),
  attach: $("attach"),
  imageFile: $("image-file"),
  attachment: $("attachment"),
  attachmentName: $("attachment-name"),
  attachmentRemove: $("attachment-remove"),
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
  streams: new Map(), // chat id -> the reply streaming into it, see startReply()
  resuming: [], // chats whose reply was still streaming when the page was left
  drafts: new Map(), // chat id -> {text, image}: each chat's composer
  image: null, // the attachment of the chat on screen: {name, size, base64}
  keyWaiters: [], // {retry, cancel} to run when the key dialog closes
  needsKey: "", // what the last /api/tags 401 told the person, if it was one
  bannerRetry: null,
  modelsLoading: null, // the /api/tags request in flight
  modelsError: null, // why the model list is unavailable, in words
  vision: new Map(), // model name -> true/false once /api/show answered
  leaving: false, // the page is being unloaded
};

// ---------------------------------------------------------------- config

function readConfig() {
  const defaults = { chatUrl: "/api/chat", tagsUrl: "/api/tags", showUrl: "/api/show" };
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
function loadChats() {
  for (const key of storage.keys()) {
    if (!key || !key.startsWith(CHAT_PREFIX)) continue;
    const chat = parseChat(storage.get(key));
    if (!chat) continue; // left in place: a broken entry is never deleted for us
    state.chats.set(chat.id, chat);
    const last = chat.messages[chat.messages.length - 1];
    if (last && last.role === "assistant" && last.status === "streaming" && last.resume) {
      state.resuming.push(chat); // still generating on the server: picked up below
      continue;
    }
    if (markInterrupted(chat)) saveChat(chat);
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
  stopStream(id);
  state.chats.delete(id);
  state.drafts.delete(id);
  storage.remove(CHAT_PREFIX + id);
  if (state.current && state.current.id === id) {
    state.current = null; // nothing to stash: it is gone
    showChat(sortChats(state.chats.values())[0] || makeChat());
  } else {
    renderChatList();
  }
}

function makeChat() {
  const id = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);
  return newChat(id, Date.now());
}

// ---------------------------------------------------------------- auth

function authHeaders(headers) {
  const key = storage.get(LS_KEY);
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

/** Show the key form with one sentence; waiter.retry runs after a key is saved, waiter.cancel if dismissed. */
function requireKey(message, waiter) {
  if (waiter) state.keyWaiters.push(waiter);
  ui.keyMessage.textContent = message;
  ui.keyInput.required = true;
  if (!ui.keyDialog.open) {
    ui.keyInput.value = "";
    ui.keyDialog.showModal();
  }
  ui.keyInput.focus();
}

function closeKeyDialog(saved) {
  if (ui.keyDialog.open) ui.keyDialog.close();
  settleKeyWaiters(saved);
}

function settleKeyWaiters(saved) {
  const waiters = state.keyWaiters;
  state.keyWaiters = [];
  ui.keyInput.required = true;
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
  state.needsKey = "";
  let res;
  try {
    res = await fetch(config.tagsUrl, { headers: authHeaders({ Accept: "application/json" }), cache: "no-store" });
  } catch {
    modelProblem("Cannot reach chatsvc to list the models; check that the server is running.");
    return;
  }
  if (res.status === 401) {
    const text = errorText(401, await detail(res));
    modelProblem(text);
    state.needsKey = text;
    requireKey(text, { retry: loadModels });
    return;
  }
  if (!res.ok) {
    modelProblem(await httpErrorText(res));
    return;
  }
  let models;
  try {
    models = modelsFrom(await res.json());
  } catch {
    modelProblem("chatsvc sent a model list this page could not read.");
    return;
  }
  const remembered = storage.get(LS_MODEL);
  ui.model.replaceChildren();
  if (!models.length) {
    ui.model.appendChild(option("", "No models installed"));
    showBanner("The model server has no models; pull one with “ollama pull <model>”, then retry.", loadModels);
    return;
  }
  for (const m of models) ui.model.appendChild(option(m.name, m.label));
  ui.model.value = models.some((m) => m.name === remembered) ? remembered : models[0].name;
  ui.model.disabled = false;
  if (ui.banner.dataset.kind === "models") hideBanner();
  checkVision();
}

function modelProblem(message) {
  state.modelsError = message;
  ui.model.replaceChildren(option("", "Models unavailable"));
  ui.model.disabled = true;
  showBanner(message, loadModels);
  ui.banner.dataset.kind = "models";
  updateAttach();
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

function selectedModel() {
  return ui.model.disabled ? "" : ui.model.value;
}

/** Ask /api/show whether the chosen model takes images, once per model. */
async function checkVision() {
  const name = selectedModel();
  if (!name || state.vision.has(name)) return updateAttach();
  updateAttach();
  try {
    const res = await fetch(config.showUrl, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "application/json" }),
      body: JSON.stringify({ model: name }),
      cache: "no-store",
    });
    if (!res.ok) return; // asked again on the next change
    state.vision.set(name, isVision(await res.json()));
  } catch {
    return;
  }
  updateAttach();
}

function updateAttach() {
  const vision = state.vision.get(selectedModel()) === true;
  ui.attach.hidden = !vision;
  if (!vision && state.image) setImage(null); // only a vision model gets an image
}

// ---------------------------------------------------------------- errors

async function detail(res) {
  try {
    return serverMessage(await res.text());
  } catch {
    return "";
  }
}

async function httpErrorText(res) {
  return errorText(res.status, await detail(res), res.headers.get("Retry-After"));
}

// ---------------------------------------------------------------- rendering

function renderChatList() {
  const all = sortChats(state.chats.values());
  const shown = searchChats(all, ui.search.value);
  const items = [];
  for (const chat of shown) {
    const li = document.createElement("li");
    li.className = "chat-item";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "chat-open";
    const name = document.createElement("span");
    name.className = "chat-name";
    name.textContent = chat.title || "New chat";
    open.title = chat.title || "New chat";
    open.append(name);
    if (state.streams.has(chat.id)) {
      // a reply is still arriving in this chat, seen or not
      li.classList.add("writing");
      const mark = document.createElement("span");
      mark.className = "chat-writing";
      mark.textContent = "writing…";
      open.append(mark);
    }
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
  if (!shown.length && all.length) {
    const li = document.createElement("li");
    li.className = "chat-none muted";
    li.textContent = "No chat matches.";
    items.push(li);
  }
  ui.chatList.replaceChildren(...items);
}

function setTitle(chat) {
  ui.title.textContent = chat.title || "New chat";
  document.title = chat.title ? `${chat.title} – chatsvc` : "chatsvc";
}

/** Put a chat on screen, keeping the composer of the one it replaces. */
function showChat(chat) {
  const prev = state.current;
  if (prev && prev !== chat) {
    state.drafts.set(prev.id, { text: ui.input.value, image: state.image });
  }
  state.current = chat;
  storage.set(LS_CURRENT, chat.id);
  setTitle(chat);
  endRename(false);
  ui.system.value = chat.system;
  updateSystemState();
  ui.systemBox.open = false;
  if (prev !== chat) {
    const draft = state.drafts.get(chat.id) || { text: "", image: null };
    ui.input.value = draft.text;
    autosize();
    setImage(draft.image);
  }
  setStreamingUI(state.streams.has(chat.id));
  renderMessages();
  renderChatList();
  scrollToBottom();
  updateJump();
}

function renderMessages() {
  const chat = state.current;
  const nodes = [];
  const s = state.streams.get(chat.id);
  for (const st of state.streams.values()) st.view = null;
  for (const msg of chat.messages) {
    const view = messageView(msg);
    if (s && s.msg === msg) s.view = view;
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

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function messageView(msg) {
  const root = el("article", "msg msg-" + (msg.role === "user" ? "user" : "assistant"));
  const who = el("div", "msg-who");
  // the model's thinking (message.thinking): open while it streams, folded once the answer starts
  const thinking = el("details", "thinking");
  const thinkingSummary = el("summary", "", "Thinking");
  const thinkingBody = el("div", "thinking-body");
  thinking.append(thinkingSummary, thinkingBody);
  const tools = el("div", "tool-calls");
  const attached = el("p", "msg-attached");
  const body = el("div", "msg-body");
  const error = el("p", "msg-error");
  error.setAttribute("role", "alert");
  const meta = el("div", "msg-meta");
  const actions = el("div", "msg-actions");
  if (msg.role === "user") root.append(who, attached, body, error, actions);
  else root.append(who, thinking, tools, body, error, meta, actions);
  const view = { root, who, thinking, thinkingSummary, thinkingBody, tools, attached, body, error, meta, actions };
  view.rendered = null;
  view.thinkingLive = null;
  view.toolsShown = -1;
  updateView(view, msg);
  return view;
}

function updateView(view, msg) {
  const isUser = msg.role === "user";
  view.root.dataset.status = msg.status || "";
  view.who.textContent = isUser ? "You" : shortName(msg.model || "Assistant");
  if (isUser) {
    if (view.rendered !== msg.content) view.body.textContent = msg.content;
    const names = msg.imageNames || [];
    view.attached.hidden = !(msg.images && msg.images.length);
    // no preview: the page loads no image, so its policy stays img-src 'self'
    view.attached.textContent = names.length ? `Image attached: ${names.join(", ")}` : "Image attached";
  } else if (view.rendered !== msg.content) {
    const frag = renderMarkdown(msg.content, document);
    for (const pre of frag.querySelectorAll("pre")) addCodeCopy(pre);
    view.body.replaceChildren(frag);
  }
  view.rendered = msg.content;
  view.body.hidden = !msg.content;

  if (!isUser) {
    view.thinking.hidden = !msg.thinking;
    if (msg.thinking && view.thinkingBody.textContent !== msg.thinking) view.thinkingBody.textContent = msg.thinking;
    const live = msg.status === "streaming" && !msg.content;
    if (view.thinkingLive !== live) {
      view.thinkingLive = live;
      view.thinking.open = live; // once: a later click by the reader is respected
      view.thinkingSummary.textContent = live ? "Thinking…" : "Thinking";
    }
    const calls = msg.toolCalls || [];
    if (view.toolsShown !== calls.length) {
      view.toolsShown = calls.length;
      view.tools.hidden = !calls.length;
      view.tools.replaceChildren(
        ...calls.map((c) => {
          const row = el("div", "tool-call");
          row.append(el("span", "tool-label", "Tool call"), el("code", "", toolCallText(c)));
          return row;
        })
      );
    }
    renderMeta(view.meta, msg);
  }

  view.error.hidden = !msg.error;
  view.error.textContent = msg.error || "";
  renderActions(view, msg);
  view.root.setAttribute("aria-busy", msg.status === "streaming" ? "true" : "false");
}

/** A Copy button on a code block: copies the block exactly as the model wrote it. */
function addCodeCopy(pre) {
  const wrap = el("div", "code-wrap");
  pre.replaceWith(wrap);
  const button = el("button", "button small copy-code", "Copy");
  button.type = "button";
  button.setAttribute("aria-label", "Copy this code");
  button.addEventListener("click", () => copyText(pre.querySelector("code").textContent, button));
  wrap.append(pre, button);
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // no async clipboard (a plain-http address other than localhost): the old way
    const area = el("textarea", "visually-hidden");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    area.remove();
  }
  const label = button.textContent;
  button.textContent = ok ? "Copied" : "Copy failed";
  announce(ok ? "Copied." : "This browser would not copy.");
  setTimeout(() => {
    if (button.isConnected) button.textContent = label === "Copied" || label === "Copy failed" ? "Copy" : label;
  }, 1500);
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
    parts.push(el("span", "typing", st.ttftMs == null ? "Waiting for the model…" : "Writing…"));
  }
  if (st.ttftMs != null) parts.push(el("span", "stat-ttft", `first token ${(st.ttftMs / 1000).toFixed(2)} s`));
  if (st.tps != null) {
    const item = el("span", "stat-tps", `${st.tps.toFixed(1)} tok/s`);
    if (st.evalCount) item.title = `${st.evalCount} tokens, from the model's own timing`;
    parts.push(item);
  } else if (st.liveTps != null) {
    const item = el("span", "stat-tps", `≈ ${st.liveTps.toFixed(1)} tok/s`);
    item.title = "Estimated while streaming; the exact figure arrives with the last chunk";
    parts.push(item);
  }
  if (STATUS_LABEL[msg.status]) parts.push(el("span", "badge badge-" + msg.status, STATUS_LABEL[msg.status]));
  meta.replaceChildren(...parts);
  meta.hidden = parts.length === 0;
}

function actionButton(label, className, onClick) {
  const b = el("button", "button small " + className, label);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

/** Copy on every finished message; Edit on the user's; Retry or Regenerate on the last reply. */
function renderActions(view, msg) {
  const chat = state.current;
  const parts = [];
  if (msg.status !== "streaming" && chat) {
    if (msg.content) {
      const copy = actionButton("Copy", "copy-msg", () => copyText(msg.content, copy));
      copy.setAttribute("aria-label", msg.role === "user" ? "Copy your message" : "Copy this reply");
      parts.push(copy);
    }
    if (msg.role === "user") {
      parts.push(actionButton("Edit", "edit", () => startEdit(view, chat, msg)));
    }
    const last = chat.messages[chat.messages.length - 1] === msg;
    if (last && msg.role === "assistant" && !state.streams.has(chat.id)) {
      const failed = Boolean(STATUS_LABEL[msg.status]);
      parts.push(actionButton(failed ? "Retry" : "Regenerate", failed ? "retry" : "regenerate", () => retryReply(chat, msg)));
    }
  }
  view.actions.replaceChildren(...parts);
  view.actions.hidden = parts.length === 0;
}

/** Edit a user message in place; sending it forks the chat from there. */
function startEdit(view, chat, msg) {
  const box = el("div", "edit-box");
  const area = el("textarea", "edit-input");
  area.value = msg.content;
  area.rows = Math.min(10, msg.content.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your message");
  const cancel = actionButton("Cancel", "edit-cancel", () => {
    box.replaceWith(view.body);
    view.actions.hidden = false;
  });
  const send = actionButton("Send", "primary edit-send", () => {
    const text = area.value;
    if (!text.trim()) return;
    const index = chat.messages.indexOf(msg);
    if (index === -1) return;
    const fork = forkChat(chat, index, text, makeChat().id, Date.now());
    saveChat(fork);
    showChat(fork);
    startReply(fork);
    focusInput(true);
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      send.click();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      cancel.click();
    }
  });
  const row = el("div", "edit-actions");
  row.append(el("span", "muted small", "Sends as a new chat from here; this one is kept."), cancel, send);
  box.append(area, row);
  view.body.replaceWith(box);
  view.actions.hidden = true;
  area.focus();
}

function nearBottom() {
  const t = ui.transcript;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
}

function scrollToBottom() {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

/** "Jump to latest" while this chat's reply streams below where the reader is. */
function updateJump() {
  ui.jump.hidden = !(state.current && state.streams.has(state.current.id) && !nearBottom());
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
  // don't pull focus away from the system prompt, the model picker or an edit
  if (force || !active || active === document.body || active === ui.send || active === ui.stop || active === ui.input) {
    ui.input.focus();
  }
}

function announce(text) {
  ui.live.textContent = text;
}

// ---------------------------------------------------------------- attachments

function setImage(image) {
  state.image = image;
  ui.attachment.hidden = !image;
  ui.attachmentName.textContent = image ? `${image.name} (${Math.max(1, Math.round(image.size / 1024))} KB)` : "";
}

function readImage(file) {
  if (!file.type.startsWith("image/")) {
    showBanner(`“${file.name}” is not an image.`);
    return;
  }
  if (file.size > MAX_IMAGE_BYTES) {
    showBanner(`“${file.name}” is larger than ${MAX_IMAGE_BYTES / 1024 / 1024} MB; attach a smaller image.`);
    return;
  }
  const chat = state.current;
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    const image = { name: file.name, size: file.size, base64: base64OfDataURL(reader.result) };
    if (state.current === chat) setImage(image);
    else state.drafts.set(chat.id, { ...(state.drafts.get(chat.id) || { text: "" }), image });
  });
  reader.addEventListener("error", () => showBanner(`This browser could not read “${file.name}”.`));
  reader.readAsDataURL(file);
}

// ---------------------------------------------------------------- streaming

function sendMessage(chat, text, image) {
  if (state.streams.has(chat.id)) return;
  const msg = { role: "user", content: text, time: Date.now() };
  if (image) {
    msg.images = [image.base64];
    msg.imageNames = [image.name];
  }
  chat.messages.push(msg);
  if (!chat.title) {
    chat.title = titleFrom(text);
    if (state.current === chat) setTitle(chat);
  }
  startReply(chat);
}

function retryReply(chat, msg) {
  if (state.streams.has(chat.id)) return;
  const i = chat.messages.indexOf(msg);
  if (i !== chat.messages.length - 1 || msg.role !== "assistant") return;
  chat.messages.pop();
  startReply(chat);
}

function startReply(chat) {
  const messages = historyFor(chat);
  const msg = { role: "assistant", content: "", model: selectedModel(), status: "streaming", time: Date.now(), stats: {} };
  chat.messages.push(msg);
  chat.updated = Date.now();
  saveChat(chat);

  const s = attachStream(chat, msg);
  announce("Waiting for the reply…");
  runStream(s, messages);
}

function attachStream(chat, msg) {
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
    after: 0, // the number of the last chunk received (the SSE id)
    reset: false, // the next chunk starts a replay from the first one
  };
  state.streams.set(chat.id, s);
  if (state.current === chat) {
    setStreamingUI(true);
    renderMessages();
    scrollToBottom();
  }
  renderChatList();
  return s;
}

/** A reply that was still streaming when the page was left: replay it, then follow it. */
function resumeReply(chat) {
  const msg = chat.messages[chat.messages.length - 1];
  const s = attachStream(chat, msg);
  followStream(s, null);
}

async function runStream(s, messages) {
  if (!s.msg.model) {
    // no model list yet (it failed, or is still loading): try once more now
    await loadModels();
    if (s.finished) return;
    if (state.needsKey) {
      // The model list asked for the key already: this message joins that one
      // question rather than asking again when its own 401 comes back.
      finish(s, "failed", state.needsKey);
      if (ui.keyDialog.open) state.keyWaiters.push({ retry: () => retryReply(s.chat, s.msg) });
      return;
    }
    s.msg.model = selectedModel();
    if (!s.msg.model && state.modelsError) return finish(s, "failed", state.modelsError);
  }
  const body = { messages, stream: true };
  if (s.msg.model) body.model = s.msg.model;
  let res;
  try {
    res = await fetch(config.chatUrl + "?resumable=1&format=sse", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: s.controller.signal,
      cache: "no-store",
    });
  } catch {
    if (s.controller.signal.aborted) return finish(s, "stopped");
    return finish(s, "failed", "Cannot reach chatsvc; check that the server is running and that this device is online, then retry.");
  }
  if (s.finished) return;

  if (res.status === 401) {
    const text = errorText(401, await detail(res));
    finish(s, "failed", text);
    requireKey(text, { retry: () => retryReply(s.chat, s.msg) });
    return;
  }
  if (!res.ok) return finish(s, "failed", await httpErrorText(res));
  if (!res.body) return finish(s, "failed", "This browser cannot read streamed replies.");
  const resume = res.headers.get("Chatsvc-Stream");
  if (resume) {
    s.msg.resume = resume; // saved with the chat: a reload picks the reply up from here
    saveChat(s.chat);
  }
  await followStream(s, res);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Read the reply from res; when the connection is cut, ask chatsvc for the
 * chunks after the last one received, waiting longer after each failed try.
 * With res null (after a reload) it starts by asking for the whole reply.
 */
async function followStream(s, res) {
  let failures = 0;
  for (;;) {
    if (res) {
      const before = s.after;
      const unreadable = await readReply(s, res);
      if (s.finished) return;
      if (s.after > before) failures = 0;
      if (!s.msg.resume || unreadable) {
        return finish(s, "lost", unreadable ? "chatsvc sent a reply this page could not read, and it ended early." : LOST_TEXT);
      }
    }
    if (failures >= RESUME_BACKOFF_MS.length) return finish(s, "lost", LOST_TEXT);
    if (res || failures) await sleep(RESUME_BACKOFF_MS[failures]);
    failures++;
    if (s.finished || state.leaving) return;
    res = await reopen(s);
    if (s.finished) return;
  }
}

/** GET the chunks after s.after; null to try again later (s is finished if it cannot be). */
async function reopen(s) {
  let res;
  try {
    res = await fetch(`${s.msg.resume}?format=sse&after=${s.after}`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal: s.controller.signal,
      cache: "no-store",
    });
  } catch {
    return null; // offline, or chatsvc restarting: the next try may reach it
  }
  if (s.finished) return null;
  if (res.ok && res.body) {
    s.reset = s.after === 0; // a replay from the start rebuilds the text
    return res;
  }
  if (res.status === 404) {
    finish(s, "lost", "chatsvc no longer has the rest of this reply (it has expired); the text received so far is kept.");
  } else if (res.status === 429 || res.status >= 500) {
    return null;
  } else {
    finish(s, "failed", await httpErrorText(res));
  }
  return null;
}

/** Read one response's events into s; true if some of it could not be read. */
async function readReply(s, res) {
  let unreadable = false;
  try {
    const reader = res.body.getReader();
    for await (const event of readSSE(reader)) {
      if (s.finished) continue; // stopped, or done already: drain quietly
      let obj;
      try {
        obj = JSON.parse(event.data);
      } catch {
        unreadable = true;
        continue;
      }
      if (event.event === "error") {
        const message = obj && typeof obj.error === "string" ? obj.error : event.data;
        finish(s, "failed", sentence(`the model stopped with an error: ${message}`));
        continue;
      }
      if (!obj || typeof obj !== "object") {
        unreadable = true;
        continue;
      }
      if (/^\d+$/.test(event.id)) s.after = Number(event.id);
      onChunk(s, obj);
    }
  } catch {
    /* cut: the caller picks the reply up again */
  }
  return unreadable;
}

function onChunk(s, obj) {
  if (s.reset) {
    // the replay after a reload: its chunks replace what was saved, never add to it
    s.reset = false;
    s.msg.content = "";
    delete s.msg.thinking;
    delete s.msg.toolCalls;
    s.pieces = 0;
  }
  const part = chunkParts(obj);
  const now = performance.now();
  if ((part.content || part.thinking || part.toolCalls.length) && s.firstAt === null) {
    s.firstAt = now;
    s.msg.stats.ttftMs = Math.round(now - s.started);
    announce("The reply is arriving.");
  }
  if (part.content) {
    s.msg.content += part.content;
    s.pieces++;
  }
  if (part.thinking) s.msg.thinking = (s.msg.thinking || "") + part.thinking;
  if (part.toolCalls.length) s.msg.toolCalls = (s.msg.toolCalls || []).concat(part.toolCalls);
  if (typeof obj.model === "string" && obj.model) s.msg.model = obj.model;
  // Ollama sends about one token per chunk: a fair estimate until the final stats
  if (s.pieces > 1 && now > s.firstAt) s.msg.stats.liveTps = ((s.pieces - 1) * 1000) / (now - s.firstAt);

  if (part.done) {
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
  updateJump();
}

function finish(s, status, error) {
  if (s.finished || state.leaving) return;
  s.finished = true;
  if (s.frame) cancelAnimationFrame(s.frame);
  s.frame = 0;
  s.msg.status = status;
  delete s.msg.resume;
  if (error) s.msg.error = error;
  delete s.msg.stats.liveTps;
  if (status !== "done" && s.msg.stats.tps == null && s.pieces > 1 && s.firstAt !== null) {
    // keep a rough rate for a partial reply
    s.msg.stats.liveTps = ((s.pieces - 1) * 1000) / (performance.now() - s.firstAt);
  }
  if (state.streams.get(s.chat.id) === s) state.streams.delete(s.chat.id);
  s.chat.updated = Date.now();
  saveChat(s.chat);
  if (state.current === s.chat) {
    setStreamingUI(false);
    const stick = nearBottom();
    renderMessages(); // also refreshes Retry / Regenerate on the last reply
    if (stick) scrollToBottom();
    updateJump();
    focusInput(false);
  }
  renderChatList();
  announce(status === "done" ? "Reply complete." : error || STATUS_LABEL[status] || "");
}

/** Stop the reply streaming into one chat (the one on screen by default). */
function stopStream(id) {
  const s = state.streams.get(id);
  if (!s) return;
  const resume = s.msg.resume;
  s.controller.abort();
  // The reply is resumable: the connection's end alone would not stop it.
  if (resume) fetch(resume, { method: "DELETE", headers: authHeaders({}) }).catch(() => {});
  finish(s, "stopped");
}

// ---------------------------------------------------------------- chat menu

function startRename() {
  ui.menu.open = false;
  ui.titleInput.value = state.current.title;
  ui.title.hidden = true;
  ui.titleInput.hidden = false;
  ui.titleInput.focus();
  ui.titleInput.select();
}

function endRename(save) {
  if (ui.titleInput.hidden) return;
  ui.titleInput.hidden = true;
  ui.title.hidden = false;
  const chat = state.current;
  const title = ui.titleInput.value.trim();
  if (save && title && title !== chat.title) {
    chat.title = title;
    saveChat(chat);
    setTitle(chat);
    renderChatList();
  }
}

function download(text, type, name) {
  ui.menu.open = false;
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
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
  const chat = state.current;
  if (state.streams.has(chat.id)) return; // this chat is still writing: the text waits in the box
  const text = ui.input.value;
  if (!text.trim()) return;
  const image = state.image;
  ui.input.value = "";
  autosize();
  setImage(null);
  sendMessage(chat, text, image);
  ui.input.focus();
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    ui.form.requestSubmit();
  } else if (event.key === "Escape" && state.streams.has(state.current.id)) {
    event.preventDefault();
    stopStream(state.current.id);
  }
});
ui.input.addEventListener("input", autosize);

ui.stop.addEventListener("click", () => {
  stopStream(state.current.id);
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

ui.search.addEventListener("input", renderChatList);

ui.model.addEventListener("change", () => {
  storage.set(LS_MODEL, ui.model.value);
  checkVision();
});

ui.attach.addEventListener("click", () => ui.imageFile.click());
ui.imageFile.addEventListener("change", () => {
  const file = ui.imageFile.files && ui.imageFile.files[0];
  ui.imageFile.value = "";
  if (file) readImage(file);
});
ui.attachmentRemove.addEventListener("click", () => {
  setImage(null);
  ui.input.focus();
});

ui.system.addEventListener("input", () => {
  const chat = state.current;
  chat.system = ui.system.value;
  updateSystemState();
  const listed = state.chats.has(chat.id);
  saveChat(chat); // a new chat is kept from its first system prompt on
  if (!listed && state.chats.has(chat.id)) renderChatList();
});

ui.transcript.addEventListener("scroll", updateJump, { passive: true });
ui.jump.addEventListener("click", () => {
  scrollToBottom();
  updateJump();
  focusInput(true);
});

ui.rename.addEventListener("click", startRename);
ui.titleInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    endRename(true);
    focusInput(true);
  } else if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation();
    endRename(false);
    focusInput(true);
  }
});
ui.titleInput.addEventListener("blur", () => endRename(true));
ui.exportMd.addEventListener("click", () =>
  download(toMarkdown(state.current), "text/markdown;charset=utf-8", exportName(state.current, "md"))
);
ui.exportJson.addEventListener("click", () =>
  download(toJSON(state.current), "application/json", exportName(state.current, "json"))
);

ui.bannerRetry.addEventListener("click", () => {
  const retry = state.bannerRetry;
  hideBanner();
  if (retry) retry();
});

// the chat menu closes when the reader clicks anywhere else
document.addEventListener("click", (event) => {
  if (ui.menu.open && !ui.menu.contains(event.target)) ui.menu.open = false;
});

ui.openSidebar.addEventListener("click", openSidebar);
ui.closeSidebar.addEventListener("click", closeSidebar);
ui.scrim.addEventListener("click", closeSidebar);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    closeSidebar();
    ui.menu.open = false;
  }
});

ui.keyButton.addEventListener("click", () => {
  ui.keyMessage.textContent = storage.get(LS_KEY)
    ? "Replace the API key this browser sends to chatsvc; save it empty to forget it."
    : "Enter the API key this browser should send to chatsvc.";
  ui.keyInput.value = "";
  ui.keyDialog.showModal();
  ui.keyInput.required = false;
  ui.keyInput.focus();
});

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (key) storage.set(LS_KEY, key);
  else if (!ui.keyInput.required) storage.remove(LS_KEY);
  else return;
  ui.keyInput.value = "";
  // a key changed by hand may unlock a model list that failed with 401
  const reloadModels = !state.keyWaiters.length && ui.model.disabled;
  closeKeyDialog(true);
  if (reloadModels) loadModels();
});

ui.keyCancel.addEventListener("click", () => closeKeyDialog(false));
ui.keyDialog.addEventListener("cancel", (event) => {
  event.preventDefault(); // Escape: close through our path so waiters are told
  closeKeyDialog(false);
});
// Chromium may close a dialog on Escape without a cancel event (its close
// watcher does so when there was no user activation): tell the waiters then too.
ui.keyDialog.addEventListener("close", () => {
  if (!ui.keyDialog.open && state.keyWaiters.length) settleKeyWaiters(false);
});

// Save streaming replies when the page goes away; the next load marks them
// interrupted. The browser then kills the fetches, which must not be recorded
// as lost connections, hence `leaving`.
function saveStreaming() {
  for (const s of state.streams.values()) saveChat(s.chat);
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
  else for (const s of state.streams.values()) scheduleRender(s);
});

// Another tab changed a chat: pick up its copy (never under a running stream).
window.addEventListener("storage", (event) => {
  if (!event.key || !event.key.startsWith(CHAT_PREFIX)) return;
  const id = event.key.slice(CHAT_PREFIX.length);
  if (state.streams.has(id)) return;
  if (event.newValue === null) {
    state.chats.delete(id);
    if (state.current && state.current.id === id) {
      state.current = null;
      showChat(sortChats(state.chats.values())[0] || makeChat());
    } else renderChatList();
    return;
  }
  const chat = parseChat(event.newValue);
  if (!chat) return;
  state.chats.set(id, chat);
  if (state.current && state.current.id === id) {
    state.current = chat;
    renderMessages();
    setTitle(chat);
    renderChatList();
  } else {
    renderChatList();
  }
});

// ---------------------------------------------------------------- start

loadChats();
const lastId = storage.get(LS_CURRENT);
showChat(state.chats.get(lastId) || sortChats(state.chats.values())[0] || makeChat());
loadModels();
for (const chat of state.resuming.splice(0)) resumeReply(chat);
ui.input.focus();
document.body.dataset.ready = "1"; // tests wait for this
