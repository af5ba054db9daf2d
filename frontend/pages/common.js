/**
 * pages/common.js: what the chat page (chat.js) and the retrieval page (rag.js) share.
 *
 *   saved(key)                       {load() -> value | null, save(value)}: JSON in localStorage
 *                                    (quietly nothing where storage is disabled or full)
 *   keptState(key, snapshot)         {load(), save(), saveSoon()}: keeps what snapshot() returns
 *                                    under key: now, or at most once a second while a reply
 *                                    streams; a save still pending is made when the page is left
 *   settingsPanel(container, specs, names, storageKey)
 *                                    form.js controls for those inputs in container, their
 *                                    state kept in localStorage; {values() (a Promise; throws a
 *                                    JobhiveError with .fields for values that cannot be read),
 *                                    reset(), showErrors(fields) -> unmatched, clearErrors()}
 *   bindComposer(textarea, send)     Enter sends (send(text)), Shift+Enter is a new line; the box
 *                                    grows with its text
 *   liveMarkdown(element, options)   {set(text, options), flush()}: re-renders at most once a
 *                                    frame while text streams in
 *   stickToBottom(fn)                runs fn (which adds to the page) and keeps the page scrolled
 *                                    to its end if it was there
 *   replyMeta(outputs, stopped)      "length · 200 tokens · 512 tokens/s"
 *   replyEnd(job, shown)             {text, status, error}: what a streamed reply becomes when
 *                                    its job ends
 *   runJob(endpoint, {inputs, jobId, onUpdate, onRetry})
 *                                    submits inputs (or, without them, follows the job jobId)
 *                                    and follows it: {jobId, done (a Promise of the finished
 *                                    job), stop()}; stop() cancels it, also while the submit is
 *                                    still on its way
 */

import * as jobhive from "../jobhive.js";
import {fieldControl, readControls} from "../form.js";
import {renderMarkdown} from "../markdown.js";
import {clearFieldErrors, showFieldErrors} from "../ui.js";

const BOTTOM_SLACK_PX = 80; // this close to the end counts as "at the end"

export function saved(key) {
  return {
    load() {
      try {
        const text = localStorage.getItem(key);
        return text ? JSON.parse(text) : null;
      } catch {
        return null;
      }
    },
    save(value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
        return true;
      } catch {
        return false; // storage disabled or full: the page still works, it just forgets
      }
    },
  };
}

const SAVE_EVERY_MS = 1000; // saveSoon()'s most frequent save

export function keptState(key, snapshot) {
  const store = saved(key);
  let timer = 0;
  const save = () => {
    clearTimeout(timer);
    timer = 0;
    store.save(snapshot());
  };
  window.addEventListener("pagehide", () => timer && save());
  return {
    load: store.load,
    save,
    saveSoon() {
      if (!timer) timer = setTimeout(save, SAVE_EVERY_MS);
    },
  };
}

/** The raw state of the controls in root ({name: value or checked}), to keep and restore. */
function controlState(root) {
  const state = {};
  for (const control of root.querySelectorAll("input[name], select[name], textarea[name]")) {
    state[control.name] = control.type === "checkbox" ? control.checked : control.value;
  }
  return state;
}

function restoreState(root, state) {
  for (const control of root.querySelectorAll("input[name], select[name], textarea[name]")) {
    if (!(control.name in state)) continue;
    if (control.type === "checkbox") control.checked = Boolean(state[control.name]);
    else control.value = String(state[control.name]);
  }
}

export function settingsPanel(container, specs, names, storageKey) {
  const store = saved(storageKey);
  const controls = names.filter((n) => specs[n]).map((n) => [n, fieldControl(n, specs[n])]);
  container.replaceChildren(...controls.map(([, control]) => control.element));
  const defaults = controlState(container);
  restoreState(container, store.load() || {});
  container.addEventListener("change", () => store.save(controlState(container)));
  return {
    values: () => readControls(controls, "some settings cannot be read"),
    reset() {
      restoreState(container, defaults);
      store.save(defaults);
      clearFieldErrors(container);
    },
    showErrors: (fields) => showFieldErrors(container, fields),
    clearErrors: () => clearFieldErrors(container),
  };
}

export function bindComposer(textarea, send) {
  const grow = () => {
    textarea.style.height = "auto";
    textarea.style.height = `${Math.min(textarea.scrollHeight + 2, window.innerHeight * 0.4)}px`;
  };
  textarea.addEventListener("input", grow);
  textarea.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) {
      return; // Shift+Enter: a new line; an IME composing text: its own Enter
    }
    event.preventDefault();
    send(textarea.value);
  });
  return {grow};
}

export function liveMarkdown(element, baseOptions = {}) {
  let pending = null;
  let frame = 0;
  const draw = () => {
    frame = 0;
    if (pending) renderMarkdown(element, pending.text, pending.options);
    pending = null;
  };
  return {
    set(text, options = baseOptions) {
      pending = {text, options};
      if (!frame) frame = requestAnimationFrame(() => stickToBottom(draw));
    },
    flush() {
      if (frame) cancelAnimationFrame(frame);
      stickToBottom(draw);
    },
  };
}

export function stickToBottom(fn) {
  const scroller = document.scrollingElement || document.documentElement;
  const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < BOTTOM_SLACK_PX;
  fn();
  if (atEnd) scroller.scrollTop = scroller.scrollHeight;
}

export function replyMeta(outputs, stopped = false) {
  const parts = [];
  if (stopped) parts.push("stopped");
  else if (outputs?.finish_reason) parts.push(outputs.finish_reason);
  if (outputs?.generated_tokens !== undefined) parts.push(`${outputs.generated_tokens} tokens`);
  else if (outputs?.tokens !== undefined) parts.push(`${outputs.tokens} tokens`);
  if (outputs?.tokens_per_s) parts.push(`${Math.round(outputs.tokens_per_s)} tokens/s`);
  return parts.join(" · ");
}

/**
 * What a streamed reply becomes when its job ends.
 *
 * Args:
 *   job (object): the finished job (done, failed or canceled).
 *   shown (string): the reply's text on the page so far.
 *
 * Returns:
 *   {text, status, error}: the text to keep (the `text` output, else the last partial text
 *   unless it is shorter than what is shown), the status ("done", "stopped" for a canceled job,
 *   else "failed") and, for a failed one, why (else null).
 */
export function replyEnd(job, shown) {
  const text = [job.outputs?.text, job.progress_outputs?.text].find((t) => typeof t === "string");
  const keep = text !== undefined && (job.status === "done" || text.length >= shown.length);
  const status = {done: "done", canceled: "stopped"}[job.status] ?? "failed";
  const error = status === "failed" ? job.error || "the job failed" : null;
  return {text: keep ? text : shown, status, error};
}

export function runJob(endpoint, {inputs = null, jobId = jobhive.newJobId(), onUpdate, onRetry} = {}) {
  let submitted = inputs === null;
  let stopRequested = false;
  const cancel = async () => {
    try {
      await jobhive.cancel(jobId, {endpoint});
    } catch (e) {
      if (e.status === 0) throw e; // unreachable: the caller says so
      // Otherwise the job has ended meanwhile: follow() sees its end.
    }
  };
  const done = (async () => {
    const job = submitted ? jobId : await jobhive.submit(endpoint, inputs, {jobId, onRetry});
    submitted = true;
    if (stopRequested) await cancel().catch(() => {});
    return jobhive.follow(job, {endpoint, onUpdate});
  })();
  return {
    jobId,
    done,
    /** Cancels the job; its partial outputs stay on the job that `done` resolves to. The job
     * id is ours, so a submit still on its way is canceled as soon as it is answered. */
    async stop() {
      if (stopRequested) return;
      stopRequested = true;
      if (submitted) await cancel();
    },
  };
}
