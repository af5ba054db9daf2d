// The generic demo page: built from the endpoint's schema (GET /api/v1/endpoints/{name}), for
// the endpoint whose route this page is served at (or ?endpoint=NAME). One control per input,
// a progress bar with the queue position, previews and partial text as they come, the outputs
// by type, cancel, and the server's field errors next to their fields.

import * as jobhive from "./jobhive.js";
import {buildForm} from "./form.js";
import {el, errorBanner, jobStatus, renderOutputs, siteFooter, siteHeader} from "./ui.js";

const WORKERS_REFRESH_MS = 5000;
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

function keyNote(schema) {
  if (!schema.client_auth) return null;
  const forget = el("button", {type: "button", className: "secondary"}, "Forget key");
  const text = el("span");
  const note = el("p", {className: "muted buttons", "data-key-note": true}, text, forget);
  const draw = () => {
    const kept = Boolean(jobhive.getKey(schema.name));
    text.textContent = kept
      ? "This endpoint needs a client key: yours is kept in this browser."
      : "This endpoint needs a client key: you will be asked for it once.";
    forget.hidden = !kept;
  };
  forget.addEventListener("click", () => {
    jobhive.forgetKey(schema.name);
    draw();
  });
  draw();
  return {element: note, draw};
}

function workersNote(name) {
  const note = el("p", {className: "muted", "data-workers": ""});
  const refresh = async () => {
    try {
      const endpoint = (await jobhive.listEndpoints()).find((e) => e.name === name);
      if (endpoint) {
        note.dataset.workers = String(endpoint.workers);
        note.textContent = endpoint.workers
          ? `${endpoint.workers} worker${endpoint.workers === 1 ? "" : "s"} online, ` +
            `${endpoint.queued} job${endpoint.queued === 1 ? "" : "s"} queued.`
          : "No worker is online: jobs wait in the queue until one connects.";
      }
    } catch {
      note.textContent = "";
    }
  };
  refresh();
  setInterval(() => document.hidden || refresh(), WORKERS_REFRESH_MS);
  return note;
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

  page.replaceChildren(
    el(
      "div",
      {},
      el("h1", {}, schema.title),
      schema.description ? el("p", {className: "lead"}, schema.description) : null,
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
        onUpdate: (update) => {
          status.update(update);
          renderOutputs(progressOutputs, schema.progress_outputs, update.progress_outputs, {
            downloads: false,
          });
          form.progress(update);
        },
      });
      form.finish(final);
      if (final.status === "done") {
        progressOutputs.replaceChildren();
        renderOutputs(outputs, schema.outputs, final.outputs, {prefix: `${schema.name}-`});
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
