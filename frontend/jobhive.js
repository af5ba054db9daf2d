/**
 * jobhive.js: the browser client of a jobhive server. A plain ES module (no build step), served
 * by the server at /static/jobhive.js; every demo page uses it.
 *
 * Usage. A page served by the server imports it with an absolute path, finds the endpoint it is
 * for, submits, and follows the job until it ends; errors are JobhiveError objects, and a 400
 * carries the server's message per input field in `error.fields`. Keys are handled for you:
 * where an endpoint requires a client key, the first request asks for it in a small dialog and
 * keeps it in localStorage (per endpoint), so it is asked once per browser.
 *
 *   import * as jobhive from "/static/jobhive.js";
 *   const schema = await jobhive.pageEndpoint();        // the endpoint this page is served for
 *   try {
 *     const job = await jobhive.submit(schema.name, {text: "hi", steps: 4, delay_s: 2});
 *     const final = await jobhive.follow(job, {onUpdate: (job, event) => show(job)});
 *     if (final.status === "done") render(final.outputs);  // else final.error says why
 *   } catch (e) {
 *     if (e.fields) showFieldErrors(e.fields); else showError(e.message);
 *   }
 *
 * A custom page (endpoints/NAME/page.html, named by `[STATIC] page = "page.html"`) is one HTML
 * file served at the endpoint's route; it loads everything else from /static/ (frontend/) with
 * absolute paths: <link rel="stylesheet" href="/static/style.css">, <link rel="icon"
 * href="/static/favicon.svg">, and <script type="module"> importing "/static/jobhive.js", plus
 * "/static/ui.js" (progress bar, error banner, outputs by type, field errors) and
 * "/static/form.js" (a form built from the schema, or one control per field) as it likes. Its
 * script may live inline or in frontend/pages/. pageEndpoint() finds its endpoint by its route;
 * <meta name="jobhive-endpoint" content="NAME"> names it outright.
 *
 * API (every function returns a Promise unless noted):
 *   listEndpoints()                      [{name, title, description, version, route,
 *                                         client_auth, queued, running, workers}]
 *   getEndpoint(name)                    the schema: {name, title, description, route,
 *                                         client_auth, inputs, outputs, progress_outputs, ...}
 *   pageEndpoint()                       the schema of this page's endpoint: named by
 *                                         <meta name="jobhive-endpoint" content="NAME">, else by
 *                                         ?endpoint=NAME, else the endpoint whose route is this
 *                                         page's path
 *   submit(endpoint, inputs, {jobId, waitS, signal, retries, onRetry})
 *                                        the job ({job_id, endpoint, status, queue_position,
 *                                         version, ...}); a full queue or rate limit (429) is
 *                                         retried after Retry-After (at most `retries` times,
 *                                         3, each wait at most 30 s; onRetry(seconds, error) is
 *                                         told), then thrown with error.retryAfterS
 *   getJob(job, {waitS, since, signal})  the job now (or once its version passes `since`)
 *                                         (with `held`, a job of version `since`: only the new
 *                                         parts of its progress texts travel, joined here)
 *   follow(job, {onUpdate, onQueued, onProgress, onResult, onError, onTransport, signal,
 *                transport})             calls onUpdate(job, event) and the handler of the event
 *                                         (queued, progress, result, error) for each change;
 *                                         resolves to the finished job (done, failed or canceled).
 *                                         Server-Sent Events through fetch (Last-Event-ID on
 *                                         reconnect), falling back to long-polling by itself
 *                                         when SSE does not work; onTransport("sse" | "poll")
 *                                         says which is used; transport: "auto" | "sse" | "poll"
 *   cancel(job, {signal})                the job after the cancel (DELETE /api/v1/jobs/{id})
 *   readFileAsDataURL(file)              "data:image/png;base64,..." of a File or Blob
 *   isFileRef(value)                     (not a Promise) whether an output value is a file
 *                                         reference {file, url, media_type, bytes, sha256}:
 *                                         images, audio and video outputs come as these (data
 *                                         URLs from older workers, or with ?inline=1)
 *   withFileUrls(outputs, {endpoint, signal, urls})
 *                                        the outputs with each file reference (a value, or an
 *                                         item of a list) given `src`: a URL for <img src>,
 *                                         <audio src> and download links. On an open endpoint
 *                                         that is the file's own URL; where the endpoint has a
 *                                         key (which an <img> cannot send) the file is fetched
 *                                         with it into a blob: URL, pushed onto `urls` so that
 *                                         the caller can revoke it. Data URLs pass as they are.
 *   downloadFile(job, name, {endpoint, signal})   a file of the job's outputs as a Blob
 *   getKey(endpoint), setKey(endpoint, key), forgetKey(endpoint)     (not Promises)
 *   askKey(endpoint, {message})          asks for a client key in a <dialog>, keeps it, and
 *                                         returns it (null if the user cancels)
 *   setKeyPrompt(fn)                     replaces that dialog: fn(endpoint, message) -> key|null
 *   isFinished(job), newJobId(), EVENT_OF_STATUS, class JobhiveError {status, message, fields,
 *                                         retryAfterS, body}
 *
 * `job` arguments take a job object (as submit returns) or a job id; with an id of a job of an
 * endpoint that needs a key, pass {endpoint: NAME} in the options.
 */

const API = "/api/v1";
const KEY_STORAGE_PREFIX = "jobhive.key.";
const POLL_WAIT_S = 25; // long-poll of a running job
const POLL_QUEUED_WAIT_S = 2; // a queued job: its queue position changes without a new version
const SSE_FIRST_EVENT_TIMEOUT_MS = 10000; // the server sends the job's state at once
const SSE_SILENCE_TIMEOUT_MS = 60000; // keepalives come every 15 s by default
const SSE_END_TIMEOUT_MS = 2000; // after the final event, for the server to end the stream
const MAX_RECONNECTS = 3; // SSE reconnects in a row before falling back to polling
const MAX_POLL_FAILURES = 10; // polls in a row that fail before follow() gives up
const MAX_RETRY_AFTER_S = 30;

/** The SSE event a job's status is sent as (polling reports the same names). */
export const EVENT_OF_STATUS = Object.freeze({
  queued: "queued",
  running: "progress",
  done: "result",
  failed: "error",
  canceled: "error",
});

/** An error reply of the server (status 0: the server could not be reached). */
export class JobhiveError extends Error {
  constructor(status, message, {fields = null, retryAfterS = null, body = null} = {}) {
    super(message);
    this.name = "JobhiveError";
    this.status = status;
    this.fields = fields; // {field: reason} on a 400 about inputs, else null
    this.retryAfterS = retryAfterS; // seconds, on a 429
    this.body = body;
  }
}

export function isFinished(job) {
  return job.status === "done" || job.status === "failed" || job.status === "canceled";
}

/** A client-chosen job id: a repeated submit (a retry) then never makes a second job. */
export function newJobId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ----- client keys

const needsKey = new Map(); // endpoint name -> client_auth, from the listings and schemas seen
const asking = new Map(); // endpoint name -> the pending askKey promise (one dialog at a time)

export function getKey(endpoint) {
  try {
    return localStorage.getItem(KEY_STORAGE_PREFIX + endpoint);
  } catch {
    return null; // storage disabled
  }
}

export function setKey(endpoint, key) {
  try {
    localStorage.setItem(KEY_STORAGE_PREFIX + endpoint, key);
  } catch {
    // storage disabled: the key lives as long as the page (see memoryKeys)
  }
  memoryKeys.set(endpoint, key);
}

export function forgetKey(endpoint) {
  memoryKeys.delete(endpoint);
  try {
    localStorage.removeItem(KEY_STORAGE_PREFIX + endpoint);
  } catch {
    // storage disabled
  }
}

const memoryKeys = new Map();

function keyOf(endpoint) {
  return endpoint ? getKey(endpoint) ?? memoryKeys.get(endpoint) ?? null : null;
}

let keyPrompt = dialogPrompt;

/** Replaces the key dialog: fn(endpoint, message) returns (a Promise of) a key or null. */
export function setKeyPrompt(fn) {
  keyPrompt = fn;
}

/** Asks for an endpoint's client key (once at a time), keeps it, and returns it or null. */
export function askKey(endpoint, {message = ""} = {}) {
  if (!asking.has(endpoint)) {
    const pending = Promise.resolve(keyPrompt(endpoint, message))
      .then((key) => {
        key = (key || "").trim();
        if (!key) return null;
        setKey(endpoint, key);
        return key;
      })
      .finally(() => asking.delete(endpoint));
    asking.set(endpoint, pending);
  }
  return asking.get(endpoint);
}

function dialogPrompt(endpoint, message) {
  const dialog = document.createElement("dialog");
  dialog.className = "jobhive-key-dialog";
  const form = document.createElement("form");
  form.method = "dialog";
  const title = document.createElement("h2");
  title.textContent = "Client key";
  const text = document.createElement("p");
  text.textContent =
    message || `The endpoint ${endpoint} needs a client key. It is kept in this browser.`;
  const label = document.createElement("label");
  label.textContent = "Key";
  const input = document.createElement("input");
  Object.assign(input, {type: "password", name: "key", required: true, autocomplete: "off"});
  label.append(input);
  const buttons = document.createElement("div");
  buttons.className = "buttons";
  const ok = Object.assign(document.createElement("button"), {value: "ok", textContent: "Use key"});
  const cancel = Object.assign(document.createElement("button"), {
    value: "cancel",
    textContent: "Cancel",
    type: "button",
    className: "secondary",
  });
  cancel.addEventListener("click", () => dialog.close("cancel"));
  buttons.append(cancel, ok);
  form.append(title, text, label, buttons);
  dialog.append(form);
  document.body.append(dialog);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? input.value : null);
      dialog.remove();
    });
    dialog.showModal();
    input.focus();
  });
}

// ----- requests

async function request(method, path, {endpoint = null, body, signal, headers = {}} = {}) {
  const init = {method, signal, cache: "no-store", headers: {Accept: "application/json", ...headers}};
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const key = keyOf(endpoint);
  if (key) init.headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new JobhiveError(0, `cannot reach the server (${e.message})`);
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("application/json")) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (!response.ok) throw errorOf(response, data);
  return data;
}

function errorOf(response, data) {
  const retryAfter = Number(response.headers.get("Retry-After"));
  return new JobhiveError(
    response.status,
    (data && data.error) || `${response.status} ${response.statusText}`,
    {
      fields: (data && data.fields) || null,
      retryAfterS: Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter : null,
      body: data,
    },
  );
}

/** Runs fn (a request with the endpoint's key); on 401/403 asks for a key and tries again. */
async function withKey(endpoint, fn) {
  if (endpoint && needsKey.get(endpoint) && !keyOf(endpoint) && !(await askKey(endpoint))) {
    // Known to need a key (asked before a request that would be refused), and none given.
    throw new JobhiveError(401, `the endpoint ${endpoint} needs a client key`);
  }
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof JobhiveError) || (e.status !== 401 && e.status !== 403) || !endpoint) {
        throw e;
      }
      if (attempt >= 2) throw e;
      const message = keyOf(endpoint)
        ? `The server refused this key for ${endpoint}: ${e.message}. Enter another key.`
        : `The endpoint ${endpoint} needs a client key. It is kept in this browser.`;
      forgetKey(endpoint);
      if (!(await askKey(endpoint, {message}))) throw e;
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      {once: true},
    );
  });
}

function jobRef(job, options) {
  if (typeof job === "string") return {id: job, endpoint: options.endpoint ?? null};
  return {id: job.job_id, endpoint: options.endpoint ?? job.endpoint ?? null};
}

// ----- endpoints

export async function listEndpoints({signal} = {}) {
  const {endpoints} = await request("GET", `${API}/endpoints`, {signal});
  for (const e of endpoints) needsKey.set(e.name, e.client_auth);
  return endpoints;
}

export async function getEndpoint(name, {signal} = {}) {
  const schema = await request("GET", `${API}/endpoints/${encodeURIComponent(name)}`, {signal});
  needsKey.set(schema.name, schema.client_auth);
  return schema;
}

export async function pageEndpoint() {
  const meta = document.querySelector('meta[name="jobhive-endpoint"]');
  let name = (meta && meta.content) || new URLSearchParams(location.search).get("endpoint");
  if (!name) {
    const path = location.pathname.replace(/\/+$/, "") || "/";
    const match = (await listEndpoints()).find((e) => e.route === path);
    if (!match) throw new JobhiveError(404, `no endpoint is served at ${path}`);
    name = match.name;
  }
  return getEndpoint(name);
}

// ----- jobs

export async function submit(endpoint, inputs, options = {}) {
  const {jobId = newJobId(), waitS = 0, signal, retries = 3, onRetry} = options;
  const query = waitS ? `?wait=${waitS}` : "";
  const path = `${API}/endpoints/${encodeURIComponent(endpoint)}/jobs${query}`;
  for (let attempt = 0; ; attempt++) {
    try {
      return await withKey(endpoint, () =>
        request("POST", path, {endpoint, body: {inputs, job_id: jobId}, signal}),
      );
    } catch (e) {
      const waitable = e.status === 429 && e.retryAfterS !== null;
      if (!waitable || attempt >= retries || e.retryAfterS > MAX_RETRY_AFTER_S) throw e;
      onRetry?.(e.retryAfterS, e);
      await sleep(e.retryAfterS * 1000, signal); // the same job_id: a retry never doubles it
    }
  }
}

export async function getJob(job, options = {}) {
  const {id, endpoint} = jobRef(job, options);
  const params = new URLSearchParams();
  if (options.waitS) params.set("wait", String(options.waitS));
  if (options.since !== undefined && options.since !== null) params.set("since", options.since);
  const held = options.held && options.held.version === options.since ? options.held : null;
  const lengths = textLengths(held);
  if (lengths) params.set("progress_from", lengths);
  const query = params.toString() ? `?${params}` : "";
  const read = () =>
    withKey(endpoint, () =>
      request("GET", `${API}/jobs/${encodeURIComponent(id)}${query}`, {
        endpoint,
        signal: options.signal,
      }),
    );
  const answer = rebuilt(await read(), held);
  return answer ?? getJob(id, {endpoint, signal: options.signal}); // (parts we lack: whole)
}

// ----- progress texts as parts: a token stream's events carry only each text's new part, with
// `progress_offsets` (where it starts, in code points of the whole text; see jobhive/protocol.py)

/** The job with its progress texts whole: each part joined to the text of `held`; null when a
 * part's start is not there (ask for the job whole). */
function rebuilt(job, held) {
  const offsets = job?.progress_offsets;
  if (!offsets) return job;
  const outputs = {...job.progress_outputs};
  const before = held?.progress_outputs ?? {};
  for (const [key, offset] of Object.entries(offsets)) {
    if (typeof outputs[key] !== "string") return null;
    if (offset === 0) continue;
    const text = before[key];
    if (typeof text !== "string") return null;
    const length = codePoints(text);
    if (offset > length) return null;
    const start = offset === length ? text : Array.from(text).slice(0, offset).join("");
    outputs[key] = start + outputs[key];
  }
  const {progress_offsets: _, ...whole} = job;
  return {...whole, progress_outputs: outputs};
}

/** The length of a string in code points (the server's offsets), not UTF-16 units. */
function codePoints(text) {
  let pairs = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff) pairs++;
  }
  return text.length - pairs;
}

/** `?progress_from=` for a long-poll past a running job: "KEY:LENGTH,..." of its texts. */
function textLengths(job) {
  if (!job || job.status !== "running" || !job.progress_outputs) return "";
  return Object.entries(job.progress_outputs)
    .filter(([key, text]) => typeof text === "string" && !/[:,]/.test(key))
    .map(([key, text]) => `${key}:${codePoints(text)}`)
    .join(",");
}

export async function cancel(job, options = {}) {
  const {id, endpoint} = jobRef(job, options);
  return withKey(endpoint, () =>
    request("DELETE", `${API}/jobs/${encodeURIComponent(id)}`, {endpoint, signal: options.signal}),
  );
}

export async function follow(job, options = {}) {
  const {id, endpoint} = jobRef(job, options);
  const transport = options.transport ?? "auto";
  let last = null;
  const emit = (next) => {
    if (last && next.version === last.version && next.queue_position === last.queue_position) {
      return;
    }
    last = next;
    const event = EVENT_OF_STATUS[next.status];
    options.onUpdate?.(next, event);
    const handler = {
      queued: options.onQueued,
      progress: options.onProgress,
      result: options.onResult,
      error: options.onError,
    }[event];
    handler?.(next);
  };
  const follower = {id, endpoint, emit, signal: options.signal, lastEventId: "", held: null};
  if (transport !== "poll") {
    options.onTransport?.("sse");
    const final = await withKey(endpoint, () => followEvents(follower));
    if (final) return final;
    if (transport === "sse") throw new JobhiveError(0, "the event stream is not available");
  }
  options.onTransport?.("poll");
  return withKey(endpoint, () => followPolls(follower, last));
}

/** Follows by SSE; resolves to the finished job, or to null when polling should take over. */
async function followEvents(follower) {
  const {id, endpoint, emit, signal} = follower;
  let reconnects = 0;
  let gotEvents = false; // SSE worked at least once on this page's job
  while (reconnects <= MAX_RECONNECTS) {
    const connection = new AbortController();
    const stop = () => connection.abort(signal.reason);
    signal?.addEventListener("abort", stop, {once: true});
    let timer = null;
    let final = null;
    const watchdog = (ms) => {
      clearTimeout(timer);
      timer = setTimeout(() => connection.abort(new Error("silent event stream")), ms);
    };
    try {
      watchdog(SSE_FIRST_EVENT_TIMEOUT_MS);
      const headers = {Accept: "text/event-stream"};
      const key = keyOf(endpoint);
      if (key) headers.Authorization = `Bearer ${key}`;
      if (follower.lastEventId) headers["Last-Event-ID"] = follower.lastEventId;
      const response = await fetch(`${API}/jobs/${encodeURIComponent(id)}/events`, {
        headers,
        cache: "no-store",
        signal: connection.signal,
      });
      if ([400, 401, 403, 404].includes(response.status)) {
        let data = null;
        try {
          data = await response.json();
        } catch {
          data = null;
        }
        throw errorOf(response, data); // about the job or the key, not the transport
      }
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
        response.body?.cancel();
        if (!gotEvents) return null;
        throw new Error(`event stream answered ${response.status}`);
      }
      const onBytes = () => watchdog(final ? SSE_END_TIMEOUT_MS : SSE_SILENCE_TIMEOUT_MS);
      for await (const event of readEvents(response.body, onBytes)) {
        gotEvents = true;
        reconnects = 0;
        const job = rebuilt(JSON.parse(event.data), follower.held);
        if (!job) {
          follower.lastEventId = ""; // the next connection starts whole
          throw new Error("a text's part came without its start");
        }
        if (event.id) follower.lastEventId = event.id;
        follower.held = job;
        emit(job);
        if (isFinished(job)) {
          final = job; // the server ends the stream now; read to its end (no aborted request)
          watchdog(SSE_END_TIMEOUT_MS);
        }
      }
      if (final) return final;
      // The server ended the stream before the job ended (it is shutting down): reconnect.
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      if (final) return final;
      if (e instanceof JobhiveError) throw e;
      if (!gotEvents) return null; // never worked here: poll instead
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", stop);
    }
    reconnects++;
    await sleep(Math.min(250 * 2 ** reconnects, 4000), signal);
  }
  return null;
}

/** The events of an SSE body: {event, id, data}; onBytes() is called for every chunk read. */
async function* readEvents(body, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = {event: "message", id: "", data: []};
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      onBytes();
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (line === "") {
          if (event.data.length) yield {event: event.event, id: event.id, data: event.data.join("\n")};
          event = {event: "message", id: event.id, data: []};
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (name === "data") event.data.push(value);
          else if (name === "event") event.event = value;
          else if (name === "id") event.id = value;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Follows by long-polling GET /api/v1/jobs/{id}?wait=S&since=VERSION until the job ends. */
async function followPolls(follower, last) {
  const {id, endpoint, emit, signal} = follower;
  let job = last;
  let failures = 0;
  for (;;) {
    try {
      const options = {endpoint, signal};
      if (job) {
        options.waitS = job.status === "queued" ? POLL_QUEUED_WAIT_S : POLL_WAIT_S;
        options.since = job.version;
        options.held = job; // only the new parts of its texts travel
      }
      job = await getJob(id, options);
      failures = 0;
      emit(job);
      if (isFinished(job)) return job;
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      const transient = e instanceof JobhiveError && (e.status === 0 || e.status >= 500);
      if (!transient || ++failures >= MAX_POLL_FAILURES) throw e;
      await sleep(Math.min(250 * 2 ** failures, 10000), signal);
    }
  }
}

// ----- files

export function isFileRef(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) &&
    typeof value.file === "string" && typeof value.url === "string";
}

/** Fetches a path (a file's URL) with the endpoint's key; resolves to its Blob. */
async function fetchBlob(path, {endpoint = null, signal} = {}) {
  const headers = {};
  const key = keyOf(endpoint);
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, {signal, headers});
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new JobhiveError(0, `cannot reach the server (${e.message})`);
  }
  if (!response.ok) {
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    throw errorOf(response, data);
  }
  return response.blob();
}

export async function downloadFile(job, name, options = {}) {
  const {id, endpoint} = jobRef(job, options);
  const path = `${API}/jobs/${encodeURIComponent(id)}/files/${encodeURIComponent(name)}`;
  return withKey(endpoint, () => fetchBlob(path, {endpoint, signal: options.signal}));
}

export async function withFileUrls(outputs, {endpoint = null, signal, urls = null} = {}) {
  if (!outputs || typeof outputs !== "object") return outputs;
  const keyed = Boolean(keyOf(endpoint));
  const one = async (value) => {
    if (!isFileRef(value)) return value;
    if (!keyed) return {...value, src: value.url}; // same origin: the browser fetches it
    const src = URL.createObjectURL(await fetchBlob(value.url, {endpoint, signal}));
    urls?.push(src);
    return {...value, src};
  };
  const entries = await Promise.all(Object.entries(outputs).map(async ([name, value]) => [
    name,
    Array.isArray(value) ? await Promise.all(value.map(one)) : await one(value),
  ]));
  return Object.fromEntries(entries);
}

export function readFileAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
