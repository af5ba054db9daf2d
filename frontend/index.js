// The index page: every endpoint with its title, description, queue, workers online and the
// models they serve, and a link to its demo page; refreshed every few seconds. A warning above
// the list names the models with random weights (the demo's tiny ones).

import * as jobhive from "./jobhive.js";
import {el, modelText, plural, randomWarning} from "./ui.js";

const REFRESH_MS = 3000;
const list = document.getElementById("endpoints");
const error = document.getElementById("error");
const warning = document.getElementById("random-weights");
const cards = new Map(); // endpoint name -> {card, update(endpoint)}

function makeCard(endpoint) {
  const title = el("a", {href: endpoint.route});
  const description = el("p", {className: "description"});
  const queued = el("span", {"data-stat": "queued"});
  const running = el("span", {"data-stat": "running"});
  const workers = el("span", {"data-stat": "workers"});
  const key = el("span", {className: "badge", hidden: true}, "client key");
  const model = el("p", {className: "model-line", hidden: true});
  const random = el("span", {className: "badge warn", "data-random-weights": "", hidden: true},
    "random weights");
  const card = el(
    "li",
    {className: "card", "data-endpoint": endpoint.name},
    el("h2", {}, title),
    description,
    model,
    el("p", {className: "stats"}, workers, queued, running, random, key),
    el(
      "p",
      {className: "stats"},
      el("code", {}, endpoint.name),
      el("a", {href: `/api/v1/endpoints/${encodeURIComponent(endpoint.name)}`}, "schema"),
    ),
  );
  const update = (e) => {
    title.href = e.route;
    title.textContent = e.title;
    description.textContent = e.description || "";
    queued.textContent = `${e.queued} queued`;
    running.textContent = `${e.running} running`;
    workers.textContent = e.workers ? `${plural(e.workers, "worker")} online` : "no worker online";
    workers.className = `badge ${e.workers ? "ok" : "warn"}`;
    key.hidden = !e.client_auth;
    const models = e.models || [];
    model.replaceChildren(el("span", {className: "label"}, "Model: "),
      models.map(modelText).join("; "));
    model.dataset.models = models.map((m) => m.name).join(" ");
    model.hidden = !models.length;
    random.hidden = !models.some((m) => m.random);
  };
  update(endpoint);
  return {card, update};
}

async function refresh() {
  try {
    const endpoints = await jobhive.listEndpoints();
    error.hidden = true;
    const names = new Set(endpoints.map((e) => e.name));
    for (const [name, entry] of cards) {
      if (!names.has(name)) {
        entry.card.remove();
        cards.delete(name);
      }
    }
    endpoints.forEach((endpoint, i) => {
      let entry = cards.get(endpoint.name);
      if (!entry) {
        entry = makeCard(endpoint);
        cards.set(endpoint.name, entry);
      } else {
        entry.update(endpoint);
      }
      if (list.children[i] !== entry.card) {
        list.insertBefore(entry.card, list.children[i] || null); // the server's order
      }
    });
    warning.textContent = randomWarning(endpoints.flatMap((e) => e.models || []));
    warning.hidden = !warning.textContent;
    if (!endpoints.length) {
      error.textContent = "This server has no endpoints.";
      error.hidden = false;
    }
  } catch (e) {
    error.textContent = `Cannot list the endpoints: ${e.message}`;
    error.hidden = false;
  }
  list.removeAttribute("aria-busy");
  document.body.dataset.refreshed = String(Date.now());
}

async function refreshForever() {
  for (;;) {
    if (!document.hidden) await refresh();
    await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
  }
}

refreshForever();
