/**
 * ui.js: DOM helpers shared by the demo pages (plain ES module, no build step).
 *
 *   el(tag, attrs, ...children)            an element; attrs set properties (className, href,
 *                                          hidden...), `data-*`/`aria-*` keys set attributes,
 *                                          `on*` functions become listeners
 *   errorBanner()                          {element, show(message), clear()}: one error line
 *   statusText(job)                        "Queued: 2 jobs ahead", "Running: 40%", "Done in 1.2 s"
 *   jobStatus()                            {element, update(job), reset()}: progress bar with
 *                                          the queue position while queued and the percent
 *                                          while running; element's data-status and data-job-id
 *                                          attributes say which job and its status
 *   renderOutputs(container, specs, values, {downloads, prefix})
 *                                          draws a job's outputs (or progress outputs) by their
 *                                          field type: image and image_list as a gallery with
 *                                          download links, audio as a player, string as text,
 *                                          numbers and booleans as values, the rest as JSON.
 *                                          A media value is a data URL or a file reference
 *                                          (given its `src` by jobhive.withFileUrls first where
 *                                          the endpoint has a key; else its own url is used)
 *   mediaOf(value, urls)                   {src, mime, href(), name} of a data URL or a file
 *                                          reference, else null
 *   showFieldErrors(root, fields)          puts each server message next to the field whose
 *                                          element has data-field="NAME" (aria-invalid on its
 *                                          control); returns the messages it found no field for
 *   clearFieldErrors(root)
 *   blobUrl(dataUrl, urls)                 an object URL for a data URL (a download link to a
 *                                          big image works better as a blob); pushed onto the
 *                                          array urls, if given, for revoking later
 *   keyNote(schema)                        null unless the endpoint needs a client key; else
 *                                          {element, draw()}: the line "This endpoint needs a
 *                                          client key: ..." (data-key-note) with a Forget key
 *                                          button; draw() redraws it (after a submit asked)
 *   workersNote(name, {element, what})     the workers of endpoint name, refreshed every 5 s
 *                                          while the page is shown; hidden until the first
 *                                          answer and while none can be had; data-workers holds
 *                                          the count. Without what: "2 workers online, 1 job
 *                                          queued." or "No worker is online: jobs wait ...";
 *                                          with what ("messages"): shown only while no worker
 *                                          is online, "No worker is online for NAME: WHAT wait
 *                                          ...". Fills element (else a new <p class="muted
 *                                          workers-note">) and returns it. All the notes of a
 *                                          page share one request
 *   modelNote(names, {element})            the models serving the endpoints `names` (one or
 *                                          more), from the same poll as workersNote: a line
 *                                          "Model: tiny-llama4 (random weights) · float32 ·
 *                                          cpu" per endpoint (data-models holds the names) and,
 *                                          while any of them has random weights, a plain warning
 *                                          (data-random-weights). Hidden while no worker is
 *                                          online; shows a worker that connects later. Fills
 *                                          element (else a new <div class="model-note">)
 *   modelText(model)                       "tiny-llama4 (random weights) · float32 · cpu", of
 *                                          an entry of the endpoint listing's `models`
 *   randomWarning(models)                  the warning's text for the random ones of models
 *   siteHeader(), siteFooter()             the header and footer every page shows
 *   plural(count, noun)                    "1 worker", "2 workers"
 *
 * keyNote, workersNote and modelNote read the key store and /api/v1/endpoints through
 * jobhive.js.
 */

import {forgetKey, getKey, isFileRef, listEndpoints} from "./jobhive.js";

const WORKERS_REFRESH_MS = 5000;

export function el(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") {
      element.setAttribute(key, value === true ? "" : String(value));
    } else {
      element[key] = value;
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function siteHeader() {
  return el(
    "header",
    {className: "site"},
    el("a", {className: "brand", href: "/"}, "jobhive"),
    el("a", {href: "/"}, "All endpoints"),
  );
}

export function siteFooter() {
  return el(
    "footer",
    {className: "site"},
    el("p", {}, "Served by jobhive. The API: ", el("a", {href: "/api/v1/endpoints"}, "/api/v1/endpoints")),
  );
}

// ----- notes about the endpoint

export function keyNote(schema) {
  if (!schema.client_auth) return null;
  const text = el("span");
  const forget = el("button", {type: "button", className: "secondary"}, "Forget key");
  const element = el("p", {className: "muted buttons", "data-key-note": ""}, text, forget);
  const draw = () => {
    const kept = Boolean(getKey(schema.name));
    text.textContent = kept
      ? "This endpoint needs a client key: yours is kept in this browser."
      : "This endpoint needs a client key: you will be asked for it once.";
    forget.hidden = !kept;
  };
  forget.addEventListener("click", () => {
    forgetKey(schema.name);
    draw();
  });
  draw();
  return {element, draw};
}

/** "1 worker", "2 workers". */
export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

const workersNotes = []; // draw(endpoints | null) of each workers note: one poll feeds them all
let workersPoll = null; // the request in flight; a note made meanwhile waits for it

function pollWorkers() {
  workersPoll ??= listEndpoints()
    .catch(() => null) // none can be had now: the notes hide until the next answer
    .then((endpoints) => {
      workersPoll = null;
      for (const draw of workersNotes) draw(endpoints);
    });
}

export function workersNote(name, {element = null, what = null} = {}) {
  const note = element || el("p", {className: "muted workers-note", hidden: true});
  watchEndpoints((endpoints) => {
    const endpoint = endpoints?.find((e) => e.name === name);
    if (!endpoint || (what && endpoint.workers > 0)) {
      note.hidden = true;
      return;
    }
    note.dataset.workers = String(endpoint.workers);
    if (what) {
      note.textContent = `No worker is online for ${name}: ${what} wait in the queue until ` +
        "one connects.";
    } else {
      note.textContent = endpoint.workers
        ? `${plural(endpoint.workers, "worker")} online, ${plural(endpoint.queued, "job")} queued.`
        : "No worker is online: jobs wait in the queue until one connects.";
    }
    note.hidden = false;
  });
  return note;
}

function watchEndpoints(draw) {
  workersNotes.push(draw);
  pollWorkers();
  if (workersNotes.length === 1) {
    setInterval(() => document.hidden || pollWorkers(), WORKERS_REFRESH_MS);
  }
}

// ----- the models serving an endpoint

/** "tiny-llama4 (random weights) · float32 · cpu" (and the workers serving it, if several). */
export function modelText(model) {
  const name = model.random ? `${model.name} (random weights)` : model.name;
  const text = [name, model.dtype, model.device].filter(Boolean).join(" · ");
  return model.workers > 1 ? `${text} (${model.workers} workers)` : text;
}

/** The warning for the models of `models` that have random weights ("" when none has). */
export function randomWarning(models) {
  const names = [...new Set(models.filter((m) => m.random).map((m) => m.name))];
  if (!names.length) return "";
  const [which, its] = names.length === 1
    ? [`${names[0]} has random weights (the demo's tiny model)`, "its"]
    : [`${names.join(" and ")} have random weights (the demo's tiny models)`, "their"];
  return `${which}: ${its} text is gibberish, ${its} images noise, ${its} search results ` +
    "arbitrary. Start a worker with real weights for real answers; see the README, " +
    "\"Starting workers\".";
}

export function modelNote(names, {element = null} = {}) {
  const note = element || el("div", {className: "model-note", hidden: true});
  const lines = el("div", {className: "model-lines"});
  const warning = el("p", {className: "warning-banner", role: "note", "data-random-weights": "",
    hidden: true});
  note.replaceChildren(lines, warning);
  note.hidden = true;
  watchEndpoints((endpoints) => {
    if (!endpoints) return; // none could be had now: keep what is shown
    const shown = names
      .map((name) => endpoints.find((e) => e.name === name))
      .filter((e) => e && Array.isArray(e.models) && e.models.length);
    lines.replaceChildren(...shown.map((e) => el(
      "p",
      {className: "model-line", "data-models": e.models.map((m) => m.name).join(" ")},
      el("span", {className: "label"}, names.length > 1 ? `${e.title || e.name}: ` : "Model: "),
      e.models.map(modelText).join("; "),
    )));
    warning.textContent = randomWarning(shown.flatMap((e) => e.models));
    warning.hidden = !warning.textContent;
    note.hidden = !shown.length;
  });
  return note;
}

export function errorBanner() {
  const element = el("p", {className: "error-banner", role: "alert", hidden: true});
  return {
    element,
    show(message) {
      element.textContent = message;
      element.hidden = false;
    },
    clear() {
      element.textContent = "";
      element.hidden = true;
    },
  };
}

function seconds(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

/** The text a job's state is shown with. */
export function statusText(job) {
  switch (job.status) {
    case "queued": {
      const ahead = job.queue_position;
      if (ahead === null || ahead === undefined) return "Queued";
      if (ahead === 0) return "Queued: next in line, waiting for a worker";
      return `Queued: ${plural(ahead, "job")} ahead`;
    }
    case "running":
      return job.progress > 0 ? `Running: ${Math.round(job.progress)}%` : "Running";
    case "done":
      return job.finished_at_ms
        ? `Done in ${seconds(job.finished_at_ms - job.created_at_ms)}`
        : "Done";
    case "failed":
      return `Failed: ${job.error || "no reason given"}`;
    case "canceled":
      return "Canceled";
    default:
      return job.status;
  }
}

export function jobStatus() {
  const fill = el("div");
  const bar = el("div", {
    className: "progress",
    role: "progressbar",
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-label": "Job progress",
  }, fill);
  const text = el("p", {className: "status-text", "aria-live": "polite"});
  const element = el("div", {className: "job-status", hidden: true}, bar, text);
  return {
    element,
    update(job) {
      element.hidden = false;
      element.dataset.status = job.status;
      element.dataset.jobId = job.job_id;
      text.textContent = statusText(job);
      const running = job.status === "running" && job.progress > 0;
      const finished = ["done", "failed", "canceled"].includes(job.status);
      bar.className = "progress";
      if (!running && !finished) bar.classList.add("indeterminate");
      if (job.status === "done") bar.classList.add("done");
      if (job.status === "failed" || job.status === "canceled") bar.classList.add("failed");
      const percent = job.status === "done" ? 100 : running ? job.progress : finished ? 100 : 0;
      fill.style.width = `${percent}%`;
      if (running || finished) bar.setAttribute("aria-valuenow", String(Math.round(percent)));
      else bar.removeAttribute("aria-valuenow");
    },
    reset() {
      element.hidden = true;
      delete element.dataset.status;
      delete element.dataset.jobId;
      text.textContent = "";
      fill.style.width = "0";
    },
  };
}

// ----- outputs

const EXTENSIONS = {
  "image/jpeg": "jpg",
  "image/png": "png",
  "image/webp": "webp",
  "image/gif": "gif",
  "audio/wav": "wav",
  "audio/x-wav": "wav",
  "audio/mpeg": "mp3",
  "audio/ogg": "ogg",
  "audio/flac": "flac",
  "video/mp4": "mp4",
};

function mimeOf(dataUrl) {
  const match = /^data:([^;,]+)/.exec(dataUrl);
  return match ? match[1] : "application/octet-stream";
}

/** An object URL for a data URL (downloads of big data URLs work better as blobs); pushed onto
 * urls, if given, so that the caller can revoke it. */
export function blobUrl(dataUrl, urls = null) {
  const comma = dataUrl.indexOf(",");
  const bytes = atob(dataUrl.slice(comma + 1));
  const array = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) array[i] = bytes.charCodeAt(i);
  const url = URL.createObjectURL(new Blob([array], {type: mimeOf(dataUrl)}));
  urls?.push(url);
  return url;
}

function guessType(value) {
  if (typeof value === "string") {
    if (value.startsWith("data:image/")) return "image";
    if (value.startsWith("data:audio/")) return "audio";
    if (value.startsWith("data:video/")) return "video";
    return "string";
  }
  if (isFileRef(value)) {
    const kind = String(value.media_type).split("/")[0];
    return ["image", "audio", "video"].includes(kind) ? kind : "file";
  }
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "float";
  if (typeof value === "boolean") return "boolean";
  if (Array.isArray(value) && value.length && value.every((v) => guessType(v) === "image")) {
    return "image_list";
  }
  return "json";
}

function isDataUrl(value) {
  return typeof value === "string" && value.startsWith("data:");
}

/** A media value as {src, mime, href(), name}: a data URL (its download link a blob URL made
 * when asked, pushed onto urls), or a file reference (src: the `src` jobhive.withFileUrls gave
 * it, else its own url; name: its file name); null for anything else. */
export function mediaOf(value, urls = null) {
  if (isDataUrl(value)) {
    return {src: value, mime: mimeOf(value), href: () => blobUrl(value, urls), name: ""};
  }
  if (isFileRef(value)) {
    const src = value.src || value.url;
    return {src, mime: value.media_type, href: () => src, name: value.file};
  }
  return null;
}

function imageFigure(media, {download, filename, alt}) {
  const figure = el("figure", {}, el("img", {src: media.src, alt, loading: "lazy"}));
  if (download) {
    figure.append(
      el("figcaption", {}, el("a", {href: media.href(), download: filename}, "Download")),
    );
  }
  return figure;
}

function renderValue(name, type, value, options) {
  const {downloads, prefix, urls} = options;
  const filename = (i, media) => `${prefix}${name}${i === null ? "" : `-${i + 1}`}.${EXTENSIONS[media.mime] || media.name.split(".").pop() || "bin"}`;
  if (value === null || value === undefined) return el("span", {className: "muted"}, "none");
  const media = mediaOf(value, urls);
  if (type === "image" && media) {
    if (!downloads) return el("img", {className: "preview", src: media.src, alt: name});
    return el("div", {className: "gallery"},
      imageFigure(media, {download: true, filename: filename(null, media), alt: name}));
  }
  const items = Array.isArray(value) ? value.map((v) => mediaOf(v, urls)) : [];
  if (type === "image_list" && items.length === value.length && items.every(Boolean)) {
    return el(
      "div",
      {className: "gallery"},
      items.map((m, i) =>
        imageFigure(m, {download: downloads, filename: filename(i, m), alt: `${name} ${i + 1}`}),
      ),
    );
  }
  if ((type === "audio" || type === "video") && media) {
    return el(
      "div",
      {},
      el(type, {controls: true, src: media.src}),
      downloads ? el("a", {href: media.href(), download: filename(null, media)}, "Download") : null,
    );
  }
  if (type === "file" && media) {
    return el("a", {href: media.href(), download: filename(null, media)}, `Download ${media.name}`);
  }
  if (type === "string" && typeof value === "string") return el("p", {className: "text"}, value);
  if (["integer", "float", "boolean"].includes(type) && typeof value !== "object") {
    return el("span", {className: "value"}, String(value));
  }
  return el("pre", {className: "json"}, JSON.stringify(value, null, 2));
}

/** Draws outputs by field type into container (replacing what was there). */
export function renderOutputs(container, specs, values, {downloads = true, prefix = ""} = {}) {
  for (const url of container._objectUrls || []) URL.revokeObjectURL(url);
  const urls = [];
  container._objectUrls = urls;
  container.replaceChildren();
  if (!values) return;
  specs = specs || {};
  const names = [
    ...Object.keys(specs).filter((n) => n in values),
    ...Object.keys(values).filter((n) => !(n in specs)),
  ].filter((n) => values[n] !== null && values[n] !== undefined); // an output not given
  for (const name of names) {
    const spec = specs[name] || {};
    const type = spec.type || guessType(values[name]);
    container.append(
      el(
        "div",
        {className: "output", "data-output": name, "data-type": type},
        el("div", {className: "name", title: spec.description || ""}, spec.label || name),
        renderValue(name, type, values[name], {downloads, prefix, urls}),
      ),
    );
  }
}

// ----- field errors

function fieldElement(root, name) {
  for (const element of root.querySelectorAll("[data-field]")) {
    if (element.dataset.field === name) return element;
  }
  return null;
}

export function clearFieldErrors(root) {
  for (const message of root.querySelectorAll(".field-error")) message.remove();
  for (const control of root.querySelectorAll('[aria-invalid="true"]')) {
    control.removeAttribute("aria-invalid");
    const described = (control.getAttribute("aria-describedby") || "")
      .split(" ")
      .filter((id) => id && !id.startsWith("error-"));
    if (described.length) control.setAttribute("aria-describedby", described.join(" "));
    else control.removeAttribute("aria-describedby");
  }
}

export function showFieldErrors(root, fields) {
  const unmatched = {};
  let first = null;
  for (const [name, reason] of Object.entries(fields || {})) {
    const field = fieldElement(root, name);
    if (!field) {
      unmatched[name] = reason;
      continue;
    }
    const id = `error-${name}`;
    const message = el("p", {className: "field-error", id}, reason);
    const controls = field.querySelectorAll("input, select, textarea");
    for (const control of controls) {
      control.setAttribute("aria-invalid", "true");
      const described = control.getAttribute("aria-describedby");
      control.setAttribute("aria-describedby", described ? `${described} ${id}` : id);
    }
    field.append(message);
    first = first || controls[0];
  }
  first?.focus();
  return unmatched;
}
