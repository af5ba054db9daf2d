// The retrieval page (endpoints/rag_search/page.html). Two tabs:
//  - Search: a text query, a query image (dropped, pasted or chosen) or both, sent to the
//    page's endpoint (rag_search); the hits come back as cards: the thumbnail of an image hit or
//    the text of a passage (query words marked), its score and where it comes from.
//  - Chat: questions to the chat endpoint named by <meta name="jobhive-chat-endpoint"> (rag_chat);
//    the answer streams as Markdown, its sources show as numbered cards below it, and every
//    [n] in the answer is a link that scrolls to source card n and highlights it.
// The tab is in the URL's hash (#chat), so /rag_search#chat opens the chat. The cards and the
// citation links are drawn by sources.js. The chat is kept in localStorage per chat endpoint,
// as on the chat page: a reload shows it again and goes on following an answer being written.

import * as jobhive from "../jobhive.js";
import {
  clearFieldErrors,
  el,
  errorBanner,
  jobStatus,
  modelNote,
  plural,
  showFieldErrors,
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
import {citationOptions, sourceCard} from "./sources.js";

const CHAT_INPUT = "chat_context";
const MAX_QUERY_IMAGE_PX = 1024; // a larger query image is scaled down before it is sent
const SENDABLE_TYPES = ["image/jpeg", "image/png", "image/webp"];
const $ = (id) => document.getElementById(id);

// ----- the page

const page = $("page");
const banner = errorBanner();
const searchStatus = jobStatus();

let searchSchema = null;
let searchSettings = null;
let searchController = null;
let queryImage = null; // the query image as a data URL

function showError(error, root) {
  if (error.fields && root) {
    const unmatched = showFieldErrors(root, error.fields);
    const rest = Object.entries(unmatched).map(([name, reason]) => `${name}: ${reason}`);
    banner.show([error.message, ...rest].join("; "));
  } else {
    banner.show(error.message || String(error));
  }
}

async function search(event) {
  event?.preventDefault();
  const form = $("search-form");
  banner.clear();
  clearFieldErrors(form);
  const text = $("query").value.trim();
  if (!text && !queryImage) {
    showFieldErrors(form, {text: "Type something to look for, or add an image below."});
    return;
  }
  let inputs;
  try {
    inputs = await searchSettings.values();
  } catch (e) {
    showError(e, form);
    return;
  }
  if (text) inputs.text = text;
  if (queryImage) inputs.image = queryImage;
  searchController?.abort(); // a new search replaces the one still running
  const controller = (searchController = new AbortController());
  const {signal} = controller;
  $("results").setAttribute("aria-busy", "true");
  try {
    const job = await jobhive.submit(searchSchema.name, inputs, {
      signal,
      onRetry: (seconds) => banner.show(`The server is busy; trying again in ${seconds} s.`),
    });
    searchStatus.update(job);
    const final = await jobhive.follow(job, {signal, onUpdate: (j) => searchStatus.update(j)});
    banner.clear();
    if (final.status === "done") {
      searchStatus.reset();
      showHits(final.outputs || {}, text);
    } else {
      banner.show(statusText(final));
    }
  } catch (e) {
    if (!signal.aborted) showError(e, form);
  } finally {
    if (searchController === controller) {
      searchController = null;
      $("results").setAttribute("aria-busy", "false");
    }
  }
}

function showHits(outputs, query) {
  const hits = Array.isArray(outputs.hits) ? outputs.hits : [];
  const took = typeof outputs.search_ms === "number" ? ` in ${Math.round(outputs.search_ms)} ms` : "";
  $("search-summary").textContent = hits.length
    ? `${plural(hits.length, "result")}${took}.`
    : "Nothing found.";
  $("results").replaceChildren(
    ...hits.map((hit) => sourceCard(hit, {id: `hit-${hit.rank}`, query})),
  );
}

// ----- the query image

async function scaledDataURL(file) {
  const bitmap = await createImageBitmap(file);
  const {width, height} = bitmap;
  const scale = Math.min(1, MAX_QUERY_IMAGE_PX / Math.max(width, height));
  if (scale === 1 && SENDABLE_TYPES.includes(file.type)) {
    bitmap.close();
    return jobhive.readFileAsDataURL(file);
  }
  const canvas = el("canvas", {
    width: Math.max(1, Math.round(width * scale)),
    height: Math.max(1, Math.round(height * scale)),
  });
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff"; // transparent parts on white, as JPEG has no alpha
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.toDataURL("image/jpeg", 0.9);
}

async function useImage(file) {
  const form = $("search-form");
  clearFieldErrors(form);
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showFieldErrors(form, {image: `${file.name || "this file"} is not an image`});
    return;
  }
  try {
    queryImage = await scaledDataURL(file);
  } catch {
    showFieldErrors(form, {image: `${file.name || "this file"} could not be read as an image`});
    return;
  }
  $("image-preview").src = queryImage;
  $("image-preview").hidden = false;
  $("image-remove").hidden = false;
  $("dropzone").classList.add("has-image");
}

function removeImage() {
  queryImage = null;
  $("image-file").value = "";
  $("image-preview").hidden = true;
  $("image-preview").removeAttribute("src");
  $("image-remove").hidden = true;
  $("dropzone").classList.remove("has-image");
}

function bindImageInput() {
  const zone = $("dropzone");
  $("image-file").addEventListener("change", () => useImage($("image-file").files[0]));
  $("image-remove").addEventListener("click", removeImage);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData?.files || []).find((f) => f.type.startsWith("image/"));
    if (file && !$("panel-search").hidden) {
      event.preventDefault();
      useImage(file);
    }
  });
}

// ----- the chat tab

let chatSchema = null;
let chatSettings = null;
let chatStore = null; // keptState of the turns
let chatRun = null; // runJob's {jobId, done, stop} of the answer being written
const turns = []; // {question, answer, sources, cited, status, error, meta, jobId, view}

const saveChat = () => chatStore?.save();
const saveChatSoon = () => chatStore?.saveSoon();

/** The kept turns that still look like turns (a damaged or older entry is dropped). */
function keptTurns() {
  const kept = chatStore.load();
  return (Array.isArray(kept) ? kept : []).filter(
    (t) => t && typeof t.question === "string" && typeof t.answer === "string",
  ).map((t) => ({
    ...t,
    sources: Array.isArray(t.sources) ? t.sources : [],
    cited: Array.isArray(t.cited) ? t.cited : [],
  }));
}

function addTurn(turn) {
  turn.view = turnView(turn, turns.length);
  turns.push(turn);
  $("empty").hidden = true;
  stickToBottom(() => $("conversation").append(turn.view.element));
  turn.view.update(null, {flush: true});
}

function turnView(turn, index) {
  const prefix = `source-${index}-`;
  const body = el("div", {className: "body"});
  const meta = el("span", {className: "meta"});
  const error = el("p", {className: "turn-error", hidden: true});
  const cards = el("ol", {className: "cards sources", "aria-label": "Sources"});
  const sourcesTitle = el("h3", {className: "sources-title", hidden: true}, "Sources");
  const answer = el(
    "article",
    {className: "turn assistant", "data-role": "assistant"},
    el("div", {className: "who"}, "Answer"),
    body,
    error,
    el("footer", {}, meta),
    sourcesTitle,
    cards,
  );
  const element = el(
    "div",
    {className: "rag-turn", id: `turn-${index}`},
    el("article", {className: "turn user", "data-role": "user"},
      el("div", {className: "who"}, "You"), el("div", {className: "body"}, turn.question)),
    answer,
  );
  const live = liveMarkdown(body);
  let drawnSources = "";
  return {
    element,
    prefix,
    update(job = null, {flush = false} = {}) {
      answer.dataset.status = turn.status;
      live.set(turn.answer, citationOptions(turn.sources, prefix));
      if (flush) live.flush();
      const writing = turn.status === "queued" || turn.status === "streaming";
      body.classList.toggle("streaming", writing);
      answer.setAttribute("aria-busy", String(writing));
      meta.textContent = turn.status === "queued"
        ? job ? statusText(job) : "Sending…"
        : replyMeta(turn.meta, turn.status === "stopped");
      error.hidden = !turn.error;
      error.textContent = turn.error || "";
      const key = JSON.stringify([turn.sources.map((s) => [s.n, s.source, s.text]), turn.cited]);
      if (key !== drawnSources) {
        drawnSources = key;
        const cited = new Set(turn.cited);
        stickToBottom(() => cards.replaceChildren(
          ...turn.sources.map((s) => sourceCard(s, {id: `${prefix}${s.n}`, cited: cited.has(s.n)})),
        ));
        sourcesTitle.hidden = turn.sources.length === 0;
      }
    },
  };
}

function setChatBusy(busy) {
  $("ask").hidden = busy;
  $("stop").hidden = !busy;
  $("stop").disabled = false;
  $("stop").textContent = "Stop";
}

function contextFor(question) {
  const context = [];
  for (const turn of turns) {
    context.push({role: "user", content: turn.question});
    if (turn.answer && turn.status !== "failed") {
      context.push({role: "assistant", content: turn.answer});
    }
  }
  context.push({role: "user", content: question});
  return context;
}

async function ask(text) {
  const question = text.trim();
  if (chatRun || !chatSchema || !question) return;
  banner.clear();
  chatSettings.clearErrors();
  $("question").value = "";
  chatComposer.grow();
  const context = contextFor(question);
  const turn = {question, answer: "", sources: [], cited: [], status: "queued", meta: null,
    jobId: jobhive.newJobId()};
  addTurn(turn);
  saveChat();
  let inputs;
  try {
    inputs = {...(await chatSettings.values()), [CHAT_INPUT]: context};
  } catch (e) {
    answerError(turn, e);
    return;
  }
  await followAnswer(turn, inputs);
}

/** Follows an answer's job to its end: submits inputs, or (without) follows turn.jobId. */
async function followAnswer(turn, inputs = null) {
  chatRun = runJob(chatSchema.name, {
    inputs,
    jobId: turn.jobId,
    onUpdate: (job) => answerProgress(turn, job),
    onRetry: (seconds) => banner.show(`The server is busy; trying again in ${seconds} s.`),
  });
  setChatBusy(true);
  try {
    answerEnd(turn, await chatRun.done);
    banner.clear();
  } catch (e) {
    answerError(turn, e);
  } finally {
    chatRun = null;
    setChatBusy(false);
    turn.view.update(null, {flush: true});
    saveChat();
    if ([$("stop"), document.body].includes(document.activeElement)) {
      $("question").focus({preventScroll: true});
    }
  }
}

function answerProgress(turn, job) {
  if (job.status === "queued") {
    turn.status = "queued";
  } else if (job.status === "running") {
    turn.status = "streaming";
    const partial = job.progress_outputs || {};
    if (Array.isArray(partial.sources)) turn.sources = partial.sources;
    if (typeof partial.text === "string") turn.answer = partial.text;
  }
  turn.view.update(job);
  saveChatSoon();
}

function answerEnd(turn, job) {
  const outputs = job.outputs || {};
  const end = replyEnd(job, turn.answer);
  turn.answer = end.text;
  turn.status = end.status;
  if (end.error) turn.error = end.error;
  const sources = [outputs.sources, job.progress_outputs?.sources].find(Array.isArray);
  if (sources) turn.sources = sources;
  if (Array.isArray(outputs.cited)) turn.cited = outputs.cited;
  if (end.status === "done") {
    turn.meta = {finish_reason: outputs.finish_reason, generated_tokens: outputs.generated_tokens};
  }
}

function answerError(turn, error) {
  turn.status = "failed";
  if (error.fields) {
    const unmatched = chatSettings.showErrors(error.fields);
    if (Object.keys(unmatched).length < Object.keys(error.fields).length) {
      $("chat-settings-panel").open = true;
    }
    const rest = Object.entries(unmatched).map(([name, reason]) => `${name}: ${reason}`);
    turn.error = [error.message, ...rest].join("; ");
  } else {
    turn.error = error.message || String(error);
  }
  turn.view.update(null, {flush: true});
  saveChat();
}

async function stopAnswer() {
  if (!chatRun || $("stop").disabled) return;
  $("stop").disabled = true;
  $("stop").textContent = "Stopping…";
  try {
    await chatRun.stop();
  } catch (e) {
    banner.show(`Could not stop the answer: ${e.message}`);
    setChatBusy(true);
  }
}

function newChat() {
  chatRun?.stop().catch(() => {});
  turns.length = 0;
  saveChat();
  $("conversation").replaceChildren($("empty"));
  $("empty").hidden = false;
  $("question").focus();
}

const chatComposer = bindComposer($("question"), ask);

// ----- tabs

const TABS = ["search", "chat"];

function selectTab(name, {focusTab = false} = {}) {
  if (!TABS.includes(name) || $(`tab-${name}`).hidden) name = "search";
  for (const tab of TABS) {
    const selected = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(selected));
    $(`tab-${tab}`).tabIndex = selected ? 0 : -1;
    $(`panel-${tab}`).hidden = !selected;
  }
  if (focusTab) $(`tab-${name}`).focus();
  const hash = name === "search" ? "" : `#${name}`;
  if (location.hash !== hash) history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
}

function bindTabs() {
  for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
  document.querySelector('[role="tablist"]').addEventListener("keydown", (event) => {
    const now = TABS.findIndex((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
    const next = {ArrowRight: now + 1, ArrowLeft: now - 1, Home: 0, End: TABS.length - 1}[event.key];
    if (next === undefined) return;
    event.preventDefault();
    selectTab(TABS[(next + TABS.length) % TABS.length], {focusTab: true});
  });
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
}

// ----- start

async function chatEndpoint() {
  const name = document.querySelector('meta[name="jobhive-chat-endpoint"]')?.content;
  if (!name) return null;
  try {
    return await jobhive.getEndpoint(name);
  } catch (e) {
    if (e.status === 404) return null; // this server has no chat over the index
    throw e;
  }
}

async function start() {
  page.before(siteHeader());
  page.after(siteFooter());
  $("notes").append(banner.element);
  try {
    [searchSchema, chatSchema] = await Promise.all([jobhive.pageEndpoint(), chatEndpoint()]);
  } catch (e) {
    banner.show(`This page cannot find its endpoint: ${e.message}`);
    page.setAttribute("aria-busy", "false");
    return;
  }
  document.title = `${searchSchema.title} · jobhive`;
  $("title").textContent = searchSchema.title;
  $("description").textContent = searchSchema.description || "";
  $("search-status").append(searchStatus.element);
  $("search-form").before(workersNote(searchSchema.name, {what: "searches"}));
  const searchNames = Object.keys(searchSchema.inputs).filter((n) => !["text", "image"].includes(n));
  searchSettings = settingsPanel($("search-settings"), searchSchema.inputs, searchNames,
    `jobhive.search-settings.${searchSchema.name}`);
  $("search-form").addEventListener("submit", search);
  bindImageInput();

  if (chatSchema) {
    $("chat-intro").after(workersNote(chatSchema.name, {what: "questions"}));
    const names = Object.keys(chatSchema.inputs).filter((n) => n !== CHAT_INPUT);
    chatSettings = settingsPanel($("chat-settings"), chatSchema.inputs, names,
      `jobhive.chat-settings.${chatSchema.name}`);
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      ask($("question").value);
    });
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Escape" && chatRun) stopAnswer();
    });
    $("stop").addEventListener("click", stopAnswer);
    $("new-chat").addEventListener("click", newChat);
    chatStore = keptState(`jobhive.chat.${chatSchema.name}`,
      () => turns.map(({view, ...turn}) => turn));
    keptTurns().forEach(addTurn);
    // An answer that was still being written when the page was left: follow it again.
    const last = turns[turns.length - 1];
    if (last && ["queued", "streaming"].includes(last.status) && last.jobId) followAnswer(last);
  } else {
    document.querySelector('[role="tablist"]').hidden = true;
    $("tab-chat").hidden = true;
  }
  $("description").after(modelNote([searchSchema.name, chatSchema?.name].filter(Boolean)));
  bindTabs();
  selectTab(location.hash.slice(1));
  page.setAttribute("aria-busy", "false");
}

start();
