// Cards for search hits and chat sources, and the [n] citation links of answers: what the
// retrieval page (rag.js) draws, kept apart to be reused (tests/test_browser_rag.py imports
// renderAnswer).

import {renderMarkdown} from "../markdown.js";
import {el} from "../ui.js";

const LONG_TEXT_CHARS = 400; // a longer passage shows folded, with "Show all"
const COMMON_WORDS = new Set(
  ("the and for with what how you your are can does this that have from which when who why " +
   "will into about there their them they our any not but was were has had its it's").split(" "),
);

// ----- cards

function scoreText(hit) {
  const parts = [];
  if (typeof hit.score === "number") parts.push(`score ${Number(hit.score.toPrecision(3))}`);
  if (typeof hit.similarity === "number") parts.push(`similarity ${hit.similarity.toFixed(2)}`);
  return parts.join(" · ");
}

function placeOf(hit) {
  const parts = [];
  if (hit.page !== null && hit.page !== undefined) parts.push(`page ${hit.page}`);
  if (Number.isInteger(hit.start_byte) && Number.isInteger(hit.end_byte)) {
    parts.push(`bytes ${hit.start_byte}–${hit.end_byte}`);
  }
  if (hit.width && hit.height) parts.push(`${hit.width}×${hit.height}`);
  return parts;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The text as nodes, the query's words marked (whole words of 3 letters or more, a plural or
 * -ed/-ing form too; common words left out). */
function marked(text, query) {
  const words = [...new Set((query || "").toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || [])]
    .filter((w) => !COMMON_WORDS.has(w))
    .map((w) => (w.length > 3 && w.endsWith("s") ? w.slice(0, -1) : w));
  if (!words.length) return [text];
  const alternatives = words.map(escapeRegExp).join("|");
  const pattern = new RegExp(
    `(?<![\\p{L}\\p{N}])((?:${alternatives})(?:s|es|ed|ing)?)(?![\\p{L}\\p{N}])`, "giu");
  return text.split(pattern).map((part, i) => (i % 2 ? el("mark", {}, part) : part));
}

function passage(text, query) {
  const paragraph = el("p", {className: "passage"}, ...marked(text, query));
  if (text.length <= LONG_TEXT_CHARS) return paragraph;
  paragraph.classList.add("folded");
  const more = el("button", {type: "button", className: "link", "aria-expanded": "false"}, "Show all");
  more.addEventListener("click", () => {
    const folded = paragraph.classList.toggle("folded");
    more.textContent = folded ? "Show all" : "Show less";
    more.setAttribute("aria-expanded", String(!folded));
  });
  return el("div", {}, paragraph, more);
}

/**
 * A card for a search hit or a chat source: the picture or the passage, its number, score and
 * source (path, page or byte range).
 *
 * Args:
 *   hit (object): a hit of rag_search ({rank, score, similarity, kind, source, text, thumbnail,
 *     start_byte, end_byte, page, found_by}) or a source of rag_chat ({n, kind, source, text,
 *     thumbnail, score}).
 *   options ({id?: string, query?: string, cited?: boolean}): the card's element id, the words
 *     to mark in its text, whether the answer cites it.
 *
 * Returns:
 *   HTMLLIElement: `li.source-card` with data-n (the number) and data-kind.
 */
export function sourceCard(hit, {id, query = "", cited = false} = {}) {
  const number = hit.n ?? hit.rank;
  const body = hit.kind === "image" && hit.thumbnail
    ? el("img", {className: "thumb", src: hit.thumbnail, alt: `Image ${hit.source}`, loading: "lazy"})
    : passage(hit.text || "", query);
  const found = Array.isArray(hit.found_by) && hit.found_by.length
    ? el("p", {className: "found-by"}, `found by ${hit.found_by.join(", ")}`)
    : null;
  return el(
    "li",
    {className: "source-card card", id, tabIndex: -1, "data-n": number, "data-kind": hit.kind},
    el(
      "div",
      {className: "card-head"},
      el("span", {className: "number"}, String(number)),
      el("span", {className: "badge"}, hit.kind),
      cited ? el("span", {className: "badge cited"}, "cited") : null,
      el("span", {className: "score"}, scoreText(hit)),
    ),
    body,
    el("p", {className: "where"}, el("code", {}, hit.source), ...placeOf(hit).map((p) => ` · ${p}`)),
    found,
  );
}

// ----- citations

/** Scrolls to the element with this id and highlights it; false when there is none. */
export function showSource(id) {
  const card = document.getElementById(id);
  if (!card) return false;
  const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
  card.scrollIntoView({behavior: still ? "auto" : "smooth", block: "nearest"});
  card.classList.remove("highlight");
  void card.offsetWidth; // restart the highlight's animation
  card.classList.add("highlight");
  card.focus({preventScroll: true});
  return true;
}

/**
 * renderMarkdown options that turn each [n] naming one of `sources` into a link to the
 * element with id `${prefix}${n}` (its source card); other [n] stay text.
 */
export function citationOptions(sources, prefix) {
  const numbers = new Set((sources || []).map((s) => s.n));
  return {
    key: `${prefix}|${[...numbers].join(",")}`,
    citation(n) {
      if (!numbers.has(n)) return null;
      const id = `${prefix}${n}`;
      const link = el("a", {className: "citation", href: `#${id}`, title: `Source ${n}`}, `[${n}]`);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        showSource(id);
      });
      return link;
    },
  };
}

/** Renders an answer (Markdown) into element, its [n] linked to the cards `${prefix}${n}`. */
export function renderAnswer(element, text, sources, prefix) {
  renderMarkdown(element, text, citationOptions(sources, prefix));
}
