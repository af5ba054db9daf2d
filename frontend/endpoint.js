// The generic demo page: built from the endpoint's schema (GET /api/v1/endpoints/{name}), for
// the endpoint whose route this page is served at (or ?endpoint=NAME). One control per input,
// a progress bar with the queue position, previews and partial text as they come, the outputs
// by type, cancel, and the server's field errors next to their fields.

import * as jobhive from "./jobhive.js";
import {buildForm} from "./form.js";
import {
  el,
  errorBanner,
  jobStatus,
  keyNote,
  modelNote,
  renderOutputs,
  siteFooter,
  siteHeader,
  workersNote,
} from "./ui.js";

const page = document.getElementById("page");
const banner = errorBanner();

function showError(error, form) {
  if (error.fields && form) {
    const unmatched = form.showErrors(error.fields);
    const rest = Object.entries(unmatched).map(([name, reason]) => `\n${name}: ${reason}`);
    banner.show(`${error.message}${rest.length ? rest.join("") : ": see the fields marked below"}`);
  } else {
    banner.show(error.message || String(error));
  }
}

function build(schema) {
  document.title = `${schema.title} · jobhive`;
  const form = buildForm(schema.inputs);
  const status = jobStatus();
  const transport = el("span", {className: "muted"});
  const cancelButton = el("button", {type: "button", className: "secondary", disabled: true}, "Cancel");
  form.buttons.append(cancelButton, transport);
  const progressOutputs = el("div", {className: "outputs progress-outputs"});
  const outputs = el("div", {className: "outputs", id: "outputs"});
  const resultCard = el("section", {className: "card", hidden: true}, el("h2", {}, "Result"), outputs);
  const key = keyNote(schema);
  let active = null; // {controller, job} while a job runs
  const fileUrls = []; // blob: URLs of the file outputs shown (keyed endpoints), see below

  page.replaceChildren(
    el(
      "div",
      {},
      el("h1", {}, schema.title),
      schema.description ? el("p", {className: "lead"}, schema.description) : null,
      modelNote([schema.name]),
      workersNote(schema.name),
      key?.element,
    ),
    banner.element,
    el("section", {className: "card"}, form.element, status.element, progressOutputs),
    resultCard,
  );
  page.before(siteHeader());
  page.after(siteFooter());

  const setBusy = (busy) => {
    form.submitButton.disabled = busy;
    cancelButton.disabled = !busy;
    page.setAttribute("aria-busy", String(busy));
  };

  form.element.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (active) return;
    banner.clear();
    form.clearErrors();
    let inputs;
    try {
      inputs = await form.values();
    } catch (e) {
      showError(e, form);
      return;
    }
    active = {controller: new AbortController(), job: null};
    const {signal} = active.controller;
    // File outputs: on a keyed endpoint fetched with the key into blob: URLs (an <img> cannot
    // send it), kept until the next job; on an open one shown from their own URLs.
    for (const url of fileUrls.splice(0)) URL.revokeObjectURL(url);
    const withFiles = (values) =>
      jobhive.withFileUrls(values, {endpoint: schema.name, signal, urls: fileUrls});
    let shown = 0; // progress renders begun: one that resolves late is not drawn over a newer
    setBusy(true);
    status.reset();
    progressOutputs.replaceChildren();
    resultCard.hidden = true;
    try {
      const job = await jobhive.submit(schema.name, inputs, {
        signal,
        onRetry: (seconds) => banner.show(`The server is busy; trying again in ${seconds} s.`),
      });
      banner.clear();
      key?.draw();
      active.job = job;
      status.update(job);
      const final = await jobhive.follow(job, {
        signal,
        onTransport: (name) => {
          transport.textContent = name === "sse" ? "" : "(polling)";
          status.element.dataset.transport = name;
        },
        onUpdate: async (update) => {
          status.update(update);
          form.progress(update);
          const render = ++shown;
          const values = await withFiles(update.progress_outputs).catch(() => null);
          if (render === shown && !signal.aborted) {
            renderOutputs(progressOutputs, schema.progress_outputs, values, {downloads: false});
          }
        },
      });
      form.finish(final);
      if (final.status === "done") {
        const values = await withFiles(final.outputs);
        shown++; // (a progress render still under way draws nothing now)
        progressOutputs.replaceChildren();
        renderOutputs(outputs, schema.outputs, values, {prefix: `${schema.name}-`});
        resultCard.hidden = false;
      } else if (final.status === "failed") {
        banner.show(final.error || "the job failed");
      }
    } catch (e) {
      if (e.name !== "AbortError") showError(e, form);
    } finally {
      key?.draw();
      setBusy(false);
      active = null;
    }
  });

  cancelButton.addEventListener("click", async () => {
    if (!active || !active.job) return;
    cancelButton.disabled = true;
    try {
      status.update(await jobhive.cancel(active.job));
    } catch (e) {
      showError(e);
      cancelButton.disabled = false;
    }
  });
}

try {
  build(await jobhive.pageEndpoint());
} catch (e) {
  page.replaceChildren(el("h1", {}, "Endpoint not found"), banner.element);
  page.before(siteHeader());
  showError(e);
} finally {
  page.setAttribute("aria-busy", "false");
}
