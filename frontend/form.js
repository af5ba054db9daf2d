/**
 * form.js: a job form built from an endpoint's input schema (GET /api/v1/endpoints/{name}).
 *
 *   const form = buildForm(schema.inputs, {submitLabel: "Run"});
 *   page.append(form.element);                // <form class="job-form" novalidate>
 *   form.element.addEventListener("submit", async (event) => {
 *     event.preventDefault();
 *     const inputs = await form.values();     // throws a JobhiveError with .fields when a
 *   });                                       // value cannot even be read (bad JSON)
 *   form.showErrors(error.fields)             // server messages next to their fields
 *
 * fieldControl(name, spec) makes one control alone ({element, read()}); readControls(pairs,
 * message) reads [name, control] pairs as form.values() does (pages/common.js's settings).
 *
 * One control per input, by field type: string (a text box, or a text area past 200
 * characters), integer and float (number with min, max and step), boolean (checkbox),
 * selection (select), json (a JSON text area), chat_context (a chat: the conversation, a
 * message box and a system prompt), image and image_list (file pickers with previews, sent as
 * data URLs), audio (file picker with a player). Defaults are filled in and descriptions shown.
 * The form does not let the browser refuse values: the server checks them and says why.
 */

import {JobhiveError, readFileAsDataURL} from "./jobhive.js";
import {clearFieldErrors, el, showFieldErrors} from "./ui.js";

const TEXTAREA_PAST = 200; // a string input that may be longer than this gets a text area

class InputError extends Error {}

function labelOf(name, spec) {
  return spec.label || name;
}

function help(name, spec, extra = "") {
  const text = [spec.description, extra].filter(Boolean).join(" ");
  return text ? el("p", {className: "help", id: `help-${name}`}, text) : null;
}

function wrap(name, spec, control, {extraHelp = "", className = ""} = {}) {
  const optional = spec.required ? "" : " (optional)";
  return el(
    "div",
    {className: `field ${className}`.trim(), "data-field": name, "data-type": spec.type},
    el("label", {for: `input-${name}`}, labelOf(name, spec), el("span", {className: "muted"}, optional)),
    control,
    help(name, spec, extraHelp),
  );
}

function describedBy(name, spec, extraHelp = "") {
  return spec.description || extraHelp ? `help-${name}` : undefined;
}

/** Empty means "not given": the server then uses the default (or says the field is required). */
function stringControl(name, spec) {
  const long = (spec.max_length ?? 65536) > TEXTAREA_PAST;
  const input = el(long ? "textarea" : "input", {
    id: `input-${name}`,
    name,
    rows: long ? 3 : undefined,
    type: long ? undefined : "text",
    value: spec.default ?? "",
    "aria-describedby": describedBy(name, spec),
  });
  return {
    element: wrap(name, spec, input),
    read: () => (input.value === "" && !spec.required ? undefined : input.value),
  };
}

function numberHint(spec) {
  const parts = [];
  if (spec.minimum !== undefined && spec.maximum !== undefined) {
    parts.push(`From ${spec.minimum} to ${spec.maximum}`);
  } else if (spec.minimum !== undefined) parts.push(`At least ${spec.minimum}`);
  else if (spec.maximum !== undefined) parts.push(`At most ${spec.maximum}`);
  if (spec.align) parts.push(`${parts.length ? "a" : "A"} multiple of ${spec.align}`);
  return parts.length ? `${parts.join(", ")}.` : "";
}

function numberControl(name, spec) {
  const hint = numberHint(spec);
  const input = el("input", {
    id: `input-${name}`,
    name,
    type: "number",
    inputMode: spec.type === "integer" ? "numeric" : "decimal",
    min: spec.minimum,
    max: spec.maximum,
    step: spec.align ?? (spec.type === "integer" ? 1 : "any"),
    value: spec.default ?? "",
    "aria-describedby": describedBy(name, spec, hint),
  });
  return {
    element: wrap(name, spec, input, {extraHelp: hint}),
    read() {
      if (input.validity.badInput) throw new InputError("must be a number");
      return input.value === "" ? undefined : Number(input.value);
    },
  };
}

function booleanControl(name, spec) {
  const input = el("input", {
    id: `input-${name}`,
    name,
    type: "checkbox",
    checked: spec.default === true,
    "aria-describedby": describedBy(name, spec),
  });
  const element = el(
    "div",
    {className: "field checkbox", "data-field": name, "data-type": spec.type},
    el("label", {}, input, labelOf(name, spec)),
    help(name, spec),
  );
  return {element, read: () => input.checked};
}

function selectionControl(name, spec) {
  const choices = spec.supported || [];
  const select = el(
    "select",
    {id: `input-${name}`, name, "aria-describedby": describedBy(name, spec)},
    spec.required || spec.default !== undefined ? null : el("option", {value: ""}, "none"),
    choices.map((choice, i) =>
      el("option", {value: String(i), selected: choice === spec.default}, String(choice)),
    ),
  );
  return {
    element: wrap(name, spec, select),
    read: () => (select.value === "" ? undefined : choices[Number(select.value)]),
  };
}

function jsonControl(name, spec) {
  const input = el("textarea", {
    id: `input-${name}`,
    name,
    className: "code",
    rows: 3,
    spellcheck: false,
    value: spec.default === undefined ? "" : JSON.stringify(spec.default, null, 2),
    "aria-describedby": describedBy(name, spec, "JSON."),
  });
  return {
    element: wrap(name, spec, input, {extraHelp: "JSON."}),
    read() {
      if (input.value.trim() === "") return undefined;
      try {
        return JSON.parse(input.value);
      } catch (e) {
        throw new InputError(`is not valid JSON (${e.message})`);
      }
    },
  };
}

/** A chat: the conversation so far, a system prompt and the next message. The message goes
 * out with the conversation; once the job is done, the reply (the `text` output) joins it. */
function chatControl(name, spec) {
  const roles = spec.roles || ["system", "user", "assistant"];
  let history = [];
  let pending = null; // the message of the running job
  const messages = el("div", {className: "messages", "aria-live": "polite"});
  const system = roles.includes("system")
    ? el("textarea", {name: `${name}.system`, rows: 2, placeholder: "You are a helpful assistant."})
    : null;
  const input = el("textarea", {
    id: `input-${name}`,
    name,
    rows: 3,
    placeholder: "Your message",
    "aria-describedby": describedBy(name, spec),
  });
  const draw = (partial = null) => {
    const bubble = (message, extra = "") =>
      el(
        "div",
        {className: `message ${message.role} ${extra}`.trim()},
        el("span", {className: "role"}, message.role),
        message.content,
      );
    messages.replaceChildren(
      ...history.map((m) => bubble(m)),
      ...(pending ? [bubble(pending)] : []),
      ...(partial !== null ? [bubble({role: "assistant", content: partial}, "partial")] : []),
    );
    messages.scrollTop = messages.scrollHeight;
  };
  const clear = el("button", {
    type: "button",
    className: "secondary",
    onclick: () => {
      history = [];
      pending = null;
      draw();
    },
  }, "Clear chat");
  const element = el(
    "div",
    {className: "field chat", "data-field": name, "data-type": spec.type},
    el("span", {className: "label"}, labelOf(name, spec)),
    messages,
    system ? el("details", {}, el("summary", {}, "System prompt"), system) : null,
    el("label", {className: "visually-hidden", for: `input-${name}`}, "Message"),
    input,
    el("div", {className: "buttons"}, clear),
    help(name, spec),
  );
  return {
    element,
    read() {
      const context = [...history];
      if (system && system.value.trim() && !context.some((m) => m.role === "system")) {
        context.unshift({role: "system", content: system.value});
      }
      pending = input.value.trim() ? {role: roles.includes("user") ? "user" : roles[0], content: input.value} : null;
      if (pending) context.push(pending);
      draw();
      return context.length ? context : undefined;
    },
    progress(job) {
      const partial = job.progress_outputs && job.progress_outputs.text;
      if (typeof partial === "string") draw(partial);
    },
    finish(job) {
      const outputs = job.outputs || {};
      const reply = typeof outputs.text === "string" ? outputs.text : null;
      if (job.status === "done" && pending) {
        if (system && system.value.trim() && !history.some((m) => m.role === "system")) {
          history.push({role: "system", content: system.value});
        }
        history.push(pending);
        if (reply !== null) history.push({role: "assistant", content: reply});
        input.value = "";
      }
      pending = null;
      draw();
    },
  };
}

function acceptOf(spec, kind) {
  const formats = spec.formats || [];
  return formats.length ? formats.map((f) => `${kind}/${f}`).join(",") : `${kind}/*`;
}

/** image, image_list and audio: a file picker whose files are sent as data URLs. */
function fileControl(name, spec) {
  const kind = spec.type === "audio" ? "audio" : "image";
  const multiple = spec.type === "image_list";
  let read = Promise.resolve([]);
  const previews = el("div", {className: "file-previews"});
  const input = el("input", {
    id: `input-${name}`,
    name,
    type: "file",
    accept: kind === "image" ? `${acceptOf(spec, "image")},image/*` : "audio/*",
    multiple,
    "aria-describedby": describedBy(name, spec),
  });
  const remove = el("button", {
    type: "button",
    className: "secondary",
    hidden: true,
    onclick: () => {
      input.value = "";
      read = Promise.resolve([]);
      previews.replaceChildren();
      remove.hidden = true;
    },
  }, multiple ? "Remove all" : "Remove");
  input.addEventListener("change", () => {
    read = Promise.all(Array.from(input.files, readFileAsDataURL));
    remove.hidden = !input.files.length;
    read.then((urls) => {
      previews.replaceChildren(
        ...urls.map((url, i) =>
          kind === "image"
            ? el("img", {src: url, alt: `${labelOf(name, spec)} ${i + 1}`})
            : el("audio", {src: url, controls: true}),
        ),
      );
    }, () => previews.replaceChildren());
  });
  const element = wrap(name, spec, el("div", {className: "buttons"}, input, remove));
  element.append(previews);
  return {
    element,
    async read() {
      let urls;
      try {
        urls = await read;
      } catch (e) {
        throw new InputError(`could not be read (${e.message})`);
      }
      if (!urls.length) return undefined;
      return multiple ? urls : urls[0];
    },
  };
}

const CONTROLS = {
  string: stringControl,
  integer: numberControl,
  float: numberControl,
  boolean: booleanControl,
  selection: selectionControl,
  json: jsonControl,
  chat_context: chatControl,
  image: fileControl,
  image_list: fileControl,
  audio: fileControl,
};

/** A control for one input field: {element, read() -> value or undefined (not given)}. */
export function fieldControl(name, spec) {
  return (CONTROLS[spec.type] || jsonControl)(name, spec);
}

/**
 * Reads controls made by fieldControl.
 *
 * Args:
 *   controls (Iterable<[string, control]>): name and control pairs (a Map or an array).
 *   message (string): the error's message when some value cannot be read.
 *
 * Returns:
 *   Promise<object>: {name: value} of the fields given (a field left empty is left out: the
 *   server fills its default). Rejects with a JobhiveError (400) whose `fields` holds the reason
 *   of every value that cannot be read (bad JSON, a number the browser could not parse).
 */
export async function readControls(controls, message = "some inputs cannot be read") {
  const values = {};
  const errors = {};
  for (const [name, control] of controls) {
    try {
      const value = await control.read();
      if (value !== undefined) values[name] = value;
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      errors[name] = e.message;
    }
  }
  if (Object.keys(errors).length) throw new JobhiveError(400, message, {fields: errors});
  return values;
}

export function buildForm(inputs, {submitLabel = "Run"} = {}) {
  const controls = new Map(Object.entries(inputs).map(([n, spec]) => [n, fieldControl(n, spec)]));
  const submitButton = el("button", {type: "submit"}, submitLabel);
  const buttons = el("div", {className: "buttons"}, submitButton);
  const element = el(
    "form",
    {className: "job-form", noValidate: true},
    [...controls.values()].map((c) => c.element),
    buttons,
  );
  return {
    element,
    controls,
    submitButton,
    buttons,
    /** The inputs to submit; fields left empty are left out (the server fills defaults). */
    values: () => readControls(controls),
    showErrors: (fields) => showFieldErrors(element, fields),
    clearErrors: () => clearFieldErrors(element),
    /** Tells the controls that care (the chat) about the job's progress and its end. */
    progress(job) {
      for (const control of controls.values()) control.progress?.(job);
    },
    finish(job) {
      for (const control of controls.values()) control.finish?.(job);
    },
  };
}
