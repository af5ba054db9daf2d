// The chat page (endpoints/llama4_chat/page.html): a conversation with a system prompt whose
// replies stream in token by token, rendered as Markdown. Stop cancels the job and keeps the
// partial reply (marked stopped); Regenerate replaces the last reply; New chat starts over.
// The conversation, the system prompt and the settings are kept in localStorage per endpoint,
// so a reload shows them again (and goes on following a reply that was still being written).
//
// Works for any endpoint with a `chat_context` input and a streamed `text` progress output;
// the sampling settings are built from the endpoint's schema (form.js controls).

import * as jobhive from "../jobhive.js";
import {
  el,
  errorBanner,
  modelNote,
  siteFooter,
  siteHeader,
  statusText,
  workersNote,
} from "../ui.js";
import {
  bindComposer,
  liveMarkdown,
  replyEnd,
  replyMeta,
  keptState,
  runJob,
  settingsPanel,
  stickToBottom,
} from "./common.js";

const CHAT_INPUT = "chat_context";
const $ = (id) => document.getElementById(id);

const page = $("page");
const conversation = $("conversation");
const prompt = $("prompt");
const sendButton = $("send");
const stopButton = $("stop");
const banner = errorBanner();

let schema = null;
let settings = null;
let store = null; // keptState of the conversation
let chat = {system: "", messages: []}; // message: {role, content, status, error, meta, jobId}
let active = null; // the reply being written: runJob's {jobId, done, stop} and its message
const views = new Map(); // message -> its view

// ----- keeping the conversation

const save = () => store?.save();
const saveSoon = () => store?.saveSoon();

function restore() {
  const kept = store.load();
  if (!kept || !Array.isArray(kept.messages)) return;
  chat = {
    system: typeof kept.system === "string" ? kept.system : "",
    messages: kept.messages.filter(
      (m) => m && ["user", "assistant"].includes(m.role) && typeof m.content === "string",
    ),
  };
}

// ----- the conversation on the page

function messageView(message) {
  const body = el("div", {className: "body"});
  const meta = el("span", {className: "meta"});
  const error = el("p", {className: "turn-error", hidden: true});
  const actions = el("span", {className: "actions"});
  const element = el(
    "article",
    {className: `turn ${message.role}`, "data-role": message.role},
    el("div", {className: "who"}, message.role === "user" ? "You" : "Assistant"),
    body,
    error,
    el("footer", {}, meta, actions),
  );
  const live = message.role === "assistant" ? liveMarkdown(body) : null;
  const copy = el("button", {type: "button", className: "link", onclick: () => copyReply(copy, message)}, "Copy");
  const again = el("button", {type: "button", className: "link regenerate", onclick: regenerate}, "Regenerate");
  return {
    element,
    /** Redraws the message; `job` (while it runs) gives the queue position. */
    update(job = null, {flush = false} = {}) {
      const status = message.status || "done";
      element.dataset.status = status;
      if (live) {
        live.set(message.content);
        if (flush) live.flush();
        body.classList.toggle("streaming", status === "streaming" || status === "queued");
        element.setAttribute("aria-busy", String(status === "streaming" || status === "queued"));
      } else {
        body.textContent = message.content;
      }
      if (status === "queued") meta.textContent = job ? statusText(job) : "Sending…";
      else if (status === "streaming") meta.textContent = replyMeta(message.meta);
      else meta.textContent = replyMeta(message.meta, status === "stopped");
      error.hidden = !message.error;
      error.textContent = message.error || "";
      const last = chat.messages[chat.messages.length - 1] === message;
      const finished = !["queued", "streaming"].includes(status);
      actions.replaceChildren(
        ...(message.role === "assistant" && message.content && finished ? [copy] : []),
        ...(message.role === "assistant" && last && finished ? [again] : []),
      );
      again.disabled = Boolean(active);
    },
  };
}

async function copyReply(button, message) {
  try {
    await navigator.clipboard.writeText(message.content);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

function addView(message) {
  const view = messageView(message);
  views.set(message, view);
  stickToBottom(() => {
    conversation.append(view.element);
    view.update(null, {flush: true});
  });
  $("empty").hidden = true;
  return view;
}

function drawConversation() {
  views.clear();
  conversation.replaceChildren($("empty"));
  for (const message of chat.messages) addView(message);
  $("empty").hidden = chat.messages.length > 0;
  window.scrollTo(0, document.documentElement.scrollHeight);
}

function refreshActions() {
  for (const view of views.values()) view.update();
}

function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  stopButton.disabled = false;
  stopButton.textContent = "Stop";
  page.setAttribute("aria-busy", String(busy));
  refreshActions();
}

// ----- replies

function contextOf(messages) {
  const context = [];
  if (chat.system.trim()) context.push({role: "system", content: chat.system});
  for (const m of messages) {
    if (m.role === "user" || (m.content && m.status !== "failed")) {
      context.push({role: m.role, content: m.content});
    }
  }
  return context;
}

async function send(text) {
  if (active || !schema || !text.trim()) return;
  prompt.value = "";
  composer.grow();
  chat.messages.push({role: "user", content: text});
  addView(chat.messages[chat.messages.length - 1]);
  await reply();
}

/** Writes an assistant reply to the conversation so far. */
async function reply() {
  banner.clear();
  settings.clearErrors();
  const context = contextOf(chat.messages);
  const message = {role: "assistant", content: "", status: "queued", jobId: jobhive.newJobId()};
  chat.messages.push(message);
  addView(message);
  save();
  let inputs;
  try {
    inputs = {...(await settings.values()), [CHAT_INPUT]: context};
  } catch (e) {
    finishWithError(message, e);
    return;
  }
  await follow(message, inputs);
}

/** Follows a reply's job to its end: submits inputs, or (without) follows message.jobId. */
async function follow(message, inputs = null) {
  active = runJob(schema.name, {
    inputs,
    jobId: message.jobId,
    onUpdate: (job) => progress(message, job),
    onRetry: (seconds) => banner.show(`The server is busy; trying again in ${seconds} s.`),
  });
  active.message = message;
  setBusy(true);
  try {
    finish(message, await active.done);
    banner.clear();
  } catch (e) {
    finishWithError(message, e);
  } finally {
    active = null;
    views.get(message)?.update(null, {flush: true});
    setBusy(false);
    save();
    if ([stopButton, document.body].includes(document.activeElement)) {
      prompt.focus({preventScroll: true}); // the Stop button just went away
    }
  }
}

function progress(message, job) {
  if (job.status === "queued") {
    message.status = "queued";
  } else if (job.status === "running") {
    message.status = "streaming";
    const partial = job.progress_outputs || {};
    if (typeof partial.text === "string") message.content = partial.text;
    if (partial.tokens !== undefined) message.meta = {tokens: partial.tokens};
  }
  views.get(message)?.update(job);
  saveSoon();
}

function finish(message, job) {
  const end = replyEnd(job, message.content);
  message.content = end.text;
  message.status = end.status;
  if (end.error) message.error = end.error;
  if (end.status === "done") {
    const {finish_reason, generated_tokens, tokens_per_s} = job.outputs || {};
    message.meta = {finish_reason, generated_tokens, tokens_per_s};
  }
}

function finishWithError(message, error) {
  message.status = "failed";
  if (error.fields) {
    const unmatched = settings.showErrors(error.fields);
    const matched = Object.keys(error.fields).length > Object.keys(unmatched).length;
    if (matched) $("settings-panel").open = true;
    const rest = Object.entries(unmatched).map(([name, reason]) => `${name}: ${reason}`);
    message.error = [error.message, ...rest].join("; ") +
      (matched ? " (see the settings marked above; then Regenerate)" : "");
  } else {
    message.error = error.message || String(error);
  }
  views.get(message)?.update();
  save();
}

async function stop() {
  if (!active || stopButton.disabled) return;
  stopButton.disabled = true;
  stopButton.textContent = "Stopping…";
  try {
    await active.stop();
  } catch (e) {
    banner.show(`Could not stop the reply: ${e.message}`);
    stopButton.disabled = false;
    stopButton.textContent = "Stop";
  }
}

function regenerate() {
  if (active) return;
  const last = chat.messages[chat.messages.length - 1];
  if (last?.role === "assistant") {
    chat.messages.pop();
    views.get(last)?.element.remove();
    views.delete(last);
  }
  if (chat.messages[chat.messages.length - 1]?.role === "user") reply();
}

function newChat() {
  if (active) stop();
  chat = {system: chat.system, messages: []};
  save();
  drawConversation();
  prompt.focus();
}

// ----- start

const composer = bindComposer(prompt, send);

function showSystemNote() {
  const text = chat.system.trim();
  $("system-note").textContent = text ? `· ${text.length > 60 ? `${text.slice(0, 60)}…` : text}` : "";
}

async function start() {
  page.before(siteHeader());
  page.after(siteFooter());
  $("notes").append(banner.element);
  try {
    schema = await jobhive.pageEndpoint();
  } catch (e) {
    banner.show(`This page cannot find its endpoint: ${e.message}`);
    page.setAttribute("aria-busy", "false");
    return;
  }
  document.title = `${schema.title} · jobhive`;
  $("title").textContent = schema.title;
  $("description").textContent = schema.description || "";
  $("description").after(modelNote([schema.name]));
  $("notes").append(workersNote(schema.name, {what: "messages"}));
  store = keptState(`jobhive.chat.${schema.name}`, () => chat);
  const names = Object.keys(schema.inputs).filter((n) => n !== CHAT_INPUT);
  settings = settingsPanel($("settings"), schema.inputs, names, `jobhive.chat-settings.${schema.name}`);
  $("settings-panel").hidden = names.length === 0;
  restore();
  $("system").value = chat.system;
  showSystemNote();
  if (chat.system) $("system-panel").open = true;
  drawConversation();
  page.setAttribute("aria-busy", "false");

  $("system").addEventListener("input", () => {
    chat.system = $("system").value;
    showSystemNote();
    saveSoon();
  });
  $("reset-settings").addEventListener("click", () => settings.reset());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(prompt.value);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && active) stop();
  });
  stopButton.addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  prompt.focus({preventScroll: true});

  // A reply that was still being written when the page was left: follow it again.
  const last = chat.messages[chat.messages.length - 1];
  if (last?.role === "assistant" && ["queued", "streaming"].includes(last.status) && last.jobId) {
    follow(last);
  }
}

start();
