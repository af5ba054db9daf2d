// The sd3 demo page (endpoints/sd3/page.html, its [STATIC] page). The markup is in the page;
// this module reads the endpoint's schema (limits, defaults, help) into the controls, submits
// through jobhive.js, shows the queue position and percent, the live previews of every image of
// the job as they sharpen, and keeps a gallery of the results (newest first) with each image's
// seed, settings and a download link. Image-to-image: drop an image on the drop zone, choose a
// file or paste one; a strength slider appears with it.

import * as jobhive from "/static/jobhive.js";
import {
  clearFieldErrors,
  el,
  errorBanner,
  jobStatus,
  keyNote,
  mediaOf,
  modelNote,
  showFieldErrors,
  workersNote,
} from "/static/ui.js";

const TEXT_FIELDS = ["prompt", "negative_prompt"];
const NUMBER_FIELDS = ["width", "height", "steps", "num_images", "cfg_scale", "seed",
  "preview_every_n_steps"];
const SELECT_FIELDS = ["preview", "output_format"];
const PAGE_FIELDS = [...TEXT_FIELDS, ...NUMBER_FIELDS, ...SELECT_FIELDS, "image", "strength"];

const $ = (id) => document.getElementById(id);
const main = $("sd3");
const IDLE_CAPTION = $("preview-caption").textContent;
const form = $("form");
const banner = errorBanner();
$("error").replaceWith(banner.element);
const status = jobStatus();
$("status").replaceWith(status.element);

let schema = null; // GET /api/v1/endpoints/{name}
let image = null; // the start image: {dataUrl, name}
let active = null; // the job being run: {jobId, canceled}
let drawKeyNote = () => {}; // redraws the client key note (once a key was asked for)

// ----- small helpers

function fieldBox(name) {
  return form.querySelector(`[data-field="${name}"]`);
}

function has(name) {
  return Boolean(schema && schema.inputs[name]);
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(4)));
}

/** "64 to 1536, a multiple of 16; default 1024" from a number field's spec (without what its
 * description says already). */
function limitsText(spec) {
  const parts = [];
  if (spec.minimum !== undefined && spec.maximum !== undefined) {
    parts.push(`${formatNumber(spec.minimum)} to ${formatNumber(spec.maximum)}`);
  } else if (spec.minimum !== undefined) {
    parts.push(`at least ${formatNumber(spec.minimum)}`);
  } else if (spec.maximum !== undefined) {
    parts.push(`at most ${formatNumber(spec.maximum)}`);
  }
  const multiple = `multiple of ${spec.align}`;
  if (spec.align && !(spec.description || "").includes(multiple)) parts.push(`a ${multiple}`);
  const range = parts.join(", ");
  const fallback = spec.default !== undefined ? `default ${spec.default}` : "";
  return [range, fallback].filter(Boolean).join("; ");
}

function setHelp(name, spec, extra = "") {
  const help = $(`help-${name}`);
  const text = [spec.description, extra ? `(${extra})` : ""].filter(Boolean).join(" ");
  help.textContent = text;
  help.hidden = !text;
}

/** A slider's step when the field has no align: about a hundred positions, in round numbers. */
function sliderStep(spec) {
  if (spec.align) return spec.align;
  if (spec.type === "integer") return 1;
  const span = (spec.maximum ?? 1) - (spec.minimum ?? 0);
  return span <= 2 ? 0.01 : span <= 50 ? 0.1 : 1;
}

/** The file extension of an image ({mime} of ui.js mediaOf: a data URL or a file). */
function extensionOf(media) {
  const type = /^image\/([a-z0-9.+-]+)/i.exec(media.mime)?.[1]?.toLowerCase() || "png";
  return type === "jpeg" ? "jpg" : type;
}

function slug(text, length = 40) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").slice(0, length).replace(/^-+|-+$/g, "");
}

/** "sd3-1234-a-red-cat.png": the endpoint, the seed and the start of the prompt. */
function filenameOf(media, seed, prompt) {
  const words = slug(prompt || "");
  return `${schema.name}-${seed}${words ? `-${words}` : ""}.${extensionOf(media)}`;
}

// ----- the controls, from the schema

function setUpControls() {
  for (const name of PAGE_FIELDS) {
    const box = fieldBox(name);
    if (!has(name)) {
      box.hidden = true; // the endpoint has no such input: nothing is sent for it
      continue;
    }
    const spec = schema.inputs[name];
    const control = $(name);
    if (TEXT_FIELDS.includes(name)) {
      if (spec.max_length) control.maxLength = spec.max_length;
      control.value = spec.default ?? "";
      setHelp(name, spec);
    } else if (NUMBER_FIELDS.includes(name) || name === "strength") {
      if (control.type === "range") {
        control.min = spec.minimum ?? 0;
        control.max = spec.maximum ?? Math.max(1, 2 * (spec.default ?? 1));
        control.step = sliderStep(spec);
      } else {
        if (spec.minimum !== undefined) control.min = spec.minimum;
        if (spec.maximum !== undefined) control.max = spec.maximum;
        control.step = spec.align ?? (spec.type === "integer" ? 1 : "any");
      }
      if (spec.default !== undefined && spec.default !== null) control.value = spec.default;
      setHelp(name, spec, limitsText(spec));
    } else if (SELECT_FIELDS.includes(name)) {
      control.replaceChildren(...(spec.supported || []).map((value) => el("option", {value}, value)));
      if (spec.default !== undefined) control.value = spec.default;
      setHelp(name, spec);
    } else if (name === "image") {
      const formats = (spec.formats || []).join(", ");
      const most = spec.max_width && spec.max_height ? `${spec.max_width}×${spec.max_height}` : "";
      const extra = spec.auto_convert
        ? "other formats and larger images are converted"
        : [formats && `${formats}`, most && `at most ${most}`].filter(Boolean).join(", ");
      setHelp(name, spec, extra);
    }
  }
  for (const name of ["cfg_scale", "strength"]) {
    const show = () => ($(`${name}-value`).value = formatNumber(Number($(name).value)));
    $(name).addEventListener("input", show);
    show();
  }
  fieldBox("strength").hidden = true; // shown with a start image
  $("seed-random").addEventListener("click", () => {
    const spec = schema.inputs.seed;
    $("seed").value = spec.minimum !== undefined && spec.minimum < 0 ? spec.minimum : -1;
    clearFieldErrors(fieldBox("seed"));
  });
}

/** The inputs to send and the errors found before sending ({} when none). */
function readInputs() {
  const inputs = {};
  const errors = {};
  for (const name of TEXT_FIELDS) if (has(name)) inputs[name] = $(name).value;
  for (const name of NUMBER_FIELDS) {
    if (!has(name)) continue;
    const control = $(name);
    if (control.value === "") {
      if (control.validity.badInput) errors[name] = "must be a number";
      continue; // empty: the server's default
    }
    inputs[name] = Number(control.value);
  }
  for (const name of SELECT_FIELDS) if (has(name) && $(name).value) inputs[name] = $(name).value;
  if (image && has("image")) {
    inputs.image = image.dataUrl;
    if (has("strength")) inputs.strength = Number($("strength").value);
  }
  return {inputs, errors};
}

/** Every setting of a job: what was sent over the schema's defaults. */
function settingsOf(inputs) {
  const settings = {};
  for (const [name, spec] of Object.entries(schema.inputs)) settings[name] = spec.default ?? null;
  return {...settings, ...inputs};
}

function showErrors(fields) {
  const more = $("more");
  if (Object.keys(fields).some((name) => more.contains(fieldBox(name)))) more.open = true;
  const unmatched = showFieldErrors(form, fields);
  const rest = Object.entries(unmatched).map(([name, reason]) => `\n${name}: ${reason}`);
  banner.show(`Some settings were refused${rest.length ? `:${rest.join("")}` : ": see the marked fields."}`);
}

// ----- the start image (image-to-image)

async function setImage(file) {
  const box = fieldBox("image");
  clearFieldErrors(box);
  const spec = schema.inputs.image;
  if (!file.type.startsWith("image/")) {
    showFieldErrors(form, {image: `${file.name || "this file"} is not an image`});
    return;
  }
  const limit = spec.max_bytes;
  if (limit && file.size > limit) {
    const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
    showFieldErrors(form, {image: `must be at most ${mib(limit)} (got ${mib(file.size)})`});
    return;
  }
  let dataUrl;
  try {
    dataUrl = await jobhive.readFileAsDataURL(file);
  } catch (e) {
    showFieldErrors(form, {image: `could not be read (${e.message})`});
    return;
  }
  image = {dataUrl, name: file.name || "pasted image"};
  $("image-preview").src = dataUrl;
  $("image-name").textContent = image.name;
  $("chosen").hidden = false;
  $("drop-label").replaceChildren(el("strong", {}, "Drop another image"), " or ",
    el("span", {className: "pick"}, "choose a file"));
  box.dataset.set = "";
  if (has("strength")) fieldBox("strength").hidden = false;
}

function removeImage() {
  image = null;
  $("image").value = "";
  $("image-preview").removeAttribute("src");
  $("chosen").hidden = true;
  $("drop-label").replaceChildren(el("strong", {}, "Drop an image here"), " or ",
    el("span", {className: "pick"}, "choose a file"));
  delete fieldBox("image").dataset.set;
  clearFieldErrors(fieldBox("image"));
  fieldBox("strength").hidden = true;
  clearFieldErrors(fieldBox("strength"));
  $("image").focus();
}

function hasFiles(event) {
  return Array.from(event.dataTransfer?.types || []).includes("Files");
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("image");
  input.addEventListener("change", () => input.files[0] && setImage(input.files[0]));
  $("image-remove").addEventListener("click", removeImage);
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) setImage(file);
  });
  // A file dropped beside the zone must not make the browser leave the page for it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => hasFiles(event) && event.preventDefault());
  }
  document.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData?.files || []).find((f) => f.type.startsWith("image/"));
    if (file && has("image")) setImage(file);
  });
}

// ----- live previews

/** Empty frames, one per image of the job, shaped like the images. */
function resetPreviews(settings) {
  const count = Math.max(1, Number(settings.num_images) || 1);
  const previews = $("previews");
  previews.style.setProperty("--columns", String(Math.min(count, 2)));
  previews.replaceChildren();
  for (let i = 0; i < count; i++) {
    previews.append(el("div", {
      className: "frame",
      style: `aspect-ratio: ${settings.width || 1} / ${settings.height || 1}`,
    }));
  }
  delete previews.dataset.step;
}

/** Shows a preview: the worker sends one strip with the job's images side by side. */
function showPreview(src, step) {
  const frames = $("previews").querySelectorAll(".frame");
  frames.forEach((frame, i) => {
    const tile = frame.querySelector("img") || frame.appendChild(el("img", {className: "tile"}));
    tile.src = src;
    tile.style.objectPosition = frames.length > 1 ? `${(100 * i) / (frames.length - 1)}% 50%` : "";
    tile.alt = `Image ${i + 1}: preview at step ${step}`;
  });
  $("previews").dataset.step = String(step);
}

/** Shows the final images: media of ui.js mediaOf (data URLs, or files). */
function showFinal(images, seeds) {
  const previews = $("previews");
  previews.style.setProperty("--columns", String(Math.min(images.length, 2)));
  previews.replaceChildren(...images.map((media, i) => el("img", {
    className: "tile final",
    src: media.src,
    alt: `Image ${i + 1} (seed ${seeds[i]})`,
  })));
  previews.dataset.step = "final";
}

function onUpdate(job) {
  status.update(job);
  const outputs = job.progress_outputs || {};
  if (job.status === "running" && outputs.steps) {
    const preview = outputs.preview_step !== undefined && outputs.preview_step !== outputs.step
      ? ` (preview from step ${outputs.preview_step})`
      : "";
    $("preview-caption").textContent = `Step ${outputs.step} of ${outputs.steps}${preview}`;
  } else if (job.status === "queued") {
    $("preview-caption").textContent = "Previews start when a worker takes the job.";
  }
  // A preview is a data URL, or a file shown from its own URL (open endpoints).
  const preview = mediaOf(outputs.preview);
  if (preview) showPreview(preview.src, outputs.preview_step ?? outputs.step ?? 0);
}

// ----- results

function openViewer(src, caption, filename, href) {
  const viewer = $("viewer");
  $("viewer-image").src = src;
  $("viewer-image").alt = caption;
  $("viewer-caption").textContent = caption;
  Object.assign($("viewer-download"), {href, download: filename});
  viewer.showModal();
}

function settingsList(settings, job) {
  const rows = [
    ["Size", `${settings.width}×${settings.height}`],
    ["Steps", settings.steps],
    ["CFG", settings.cfg_scale],
    settings.image ? ["Strength", settings.strength] : null,
    ["Mode", settings.image ? "image-to-image" : "text-to-image"],
    settings.negative_prompt ? ["Negative", settings.negative_prompt] : null,
    ["Format", settings.output_format],
    job.finished_at_ms && job.created_at_ms
      ? ["Time", `${((job.finished_at_ms - job.created_at_ms) / 1000).toFixed(1)} s`]
      : null,
  ].filter((row) => row && row[1] !== null && row[1] !== undefined && row[1] !== "");
  return el("dl", {className: "settings"},
    rows.flatMap(([name, value]) => [el("dt", {}, name),
      el("dd", {"data-setting": name.toLowerCase()}, String(value))]));
}

/** Adds a finished job to the gallery; images are media of ui.js mediaOf. */
function addResult(job, settings, images) {
  const {seeds = []} = job.outputs || {};
  const prompt = settings.prompt || "";
  const figures = images.map((media, i) => {
    const {src} = media;
    const seed = seeds[i] ?? "?";
    const filename = filenameOf(media, seed, prompt);
    const href = media.href();
    const caption = `${prompt || "(no prompt)"}, seed ${seed}`;
    const useSeed = el("button", {
      type: "button",
      className: "link",
      onclick: () => {
        $("seed").value = seed;
        $("seed").focus();
      },
    }, "Use seed");
    return el("figure", {className: "result-image", "data-seed": seed},
      el("button", {
        type: "button",
        className: "image-button",
        "aria-label": `Show image ${i + 1} (seed ${seed}) large`,
        onclick: () => openViewer(src, caption, filename, href),
      }, el("img", {src, alt: caption})),
      el("figcaption", {},
        el("span", {className: "seed"}, `Seed ${seed}`),
        el("a", {href, download: filename}, "Download"),
        seed === "?" || !has("seed") ? null : useSeed));
  });
  const article = el("article", {className: "result card", "data-job-id": job.job_id},
    el("p", {className: "prompt"}, prompt || el("span", {className: "muted"}, "(no prompt)")),
    el("div", {className: "result-images"}, figures),
    settingsList(settings, job));
  $("gallery").prepend(article);
  $("gallery-empty").hidden = true;
}

// ----- running a job

function setRunning(running) {
  $("generate").disabled = running;
  $("cancel").hidden = !running;
  $("cancel").disabled = false;
  $("cancel").textContent = "Cancel";
  main.setAttribute("aria-busy", String(running));
}

async function generate() {
  if (active || !schema) return;
  banner.clear();
  clearFieldErrors(form);
  const {inputs, errors} = readInputs();
  if (Object.keys(errors).length) {
    showErrors(errors);
    return;
  }
  const settings = settingsOf(inputs);
  active = {jobId: jobhive.newJobId(), canceled: false};
  const {jobId} = active;
  setRunning(true);
  status.update({status: "queued", queue_position: null});
  resetPreviews(settings);
  $("preview-caption").textContent = settings.preview === "none"
    ? "Previews are off (see Previews and format)."
    : "Submitting…";
  try {
    const job = await jobhive.submit(schema.name, inputs, {
      jobId,
      onRetry: (seconds) => banner.show(`The server is busy; trying again in ${seconds} s.`),
    });
    banner.clear();
    drawKeyNote();
    if (active.canceled) jobhive.cancel(job).catch(() => {}); // canceled while submitting
    const final = await jobhive.follow(job, {onUpdate});
    status.update(final);
    if (final.status === "done") {
      // File outputs: fetched with the key into blob: URLs where the endpoint has one (an
      // <img> cannot send it); data URLs (older workers) as they are. Kept while the page is.
      const outputs = await jobhive.withFileUrls(final.outputs, {endpoint: schema.name});
      const images = (outputs?.images || []).map((image) => mediaOf(image)).filter(Boolean);
      showFinal(images, final.outputs?.seeds || []);
      $("preview-caption").textContent = "Done: the final images, also first in the results.";
      addResult(final, settings, images);
    } else if (final.status === "canceled") {
      const step = final.progress_outputs?.step;
      $("preview-caption").textContent = step ? `Canceled at step ${step}.` : "Canceled.";
    } else {
      $("preview-caption").textContent = "The job failed.";
      banner.show(`The job failed: ${final.error || "no reason given"}`);
    }
  } catch (e) {
    status.reset();
    $("previews").replaceChildren();
    $("preview-caption").textContent = IDLE_CAPTION;
    if (e.fields) showErrors(e.fields);
    else banner.show(e.message || String(e));
  } finally {
    active = null;
    setRunning(false);
  }
}

async function cancelJob() {
  if (!active) return;
  active.canceled = true;
  const button = $("cancel");
  button.disabled = true;
  button.textContent = "Canceling…";
  try {
    status.update(await jobhive.cancel(active.jobId, {endpoint: schema.name}));
  } catch (e) {
    if (e.status !== 404) { // 404: not submitted yet; generate() cancels once it is
      banner.show(`Could not cancel: ${e.message}`);
      button.disabled = false;
      button.textContent = "Cancel";
    }
  }
}

// ----- start

function setUp() {
  document.title = `${schema.title || schema.name} · jobhive`;
  $("title").textContent = schema.title || schema.name;
  $("description").textContent = schema.description || "";
  $("description").after(modelNote([schema.name]));
  const api = document.querySelector("footer.site a");
  api.href = api.textContent = `/api/v1/endpoints/${encodeURIComponent(schema.name)}`;
  setUpControls();
  setUpDropZone();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  for (const name of TEXT_FIELDS) {
    $(name).addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        generate();
      }
    });
  }
  $("cancel").addEventListener("click", cancelJob);
  $("viewer").addEventListener("click", (event) => {
    if (event.target === event.currentTarget) event.currentTarget.close(); // the backdrop
  });
  workersNote(schema.name, {element: $("workers")});
  const key = keyNote(schema);
  if (key) {
    drawKeyNote = key.draw;
    $("workers").after(key.element);
  }
}

try {
  schema = await jobhive.pageEndpoint();
  setUp();
} catch (e) {
  banner.show(`Could not load this page's endpoint: ${e.message}`);
  $("generate").disabled = true;
} finally {
  main.setAttribute("aria-busy", "false");
}
