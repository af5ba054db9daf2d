/**
 * markdown.js: a small, safe Markdown renderer for model replies (plain ES module, no build step).
 *
 * Safe by construction: the text is never parsed as HTML. Every piece becomes a DOM text node or
 * an element made here (so `<script>`, `<img onerror>` and the like show as the characters they
 * are), and links keep only http(s) URLs. The subset: paragraphs (a single newline is a line
 * break, as in chat), **strong**, *emphasis*, ~~strikethrough~~, `inline code`, fenced code
 * blocks with a copy button, bullet and numbered lists (nested by indentation), headings,
 * block quotes, rules, [links](https://...) and bare https:// URLs.
 *
 * Made for text that streams: call renderMarkdown again with the longer text and only the blocks
 * that changed are rebuilt (the others, their selection and their copy buttons, stay as they
 * are); a code fence that is not closed yet renders as a code block up to the end of the text.
 *
 *   import {renderMarkdown} from "/static/markdown.js";
 *   renderMarkdown(element, text);                 // element gets class "md"
 *   renderMarkdown(element, text, {citation: (n) => n <= 3 ? linkTo(n) : null, key: "3"});
 *
 * Options: `citation(n)` is asked for each `[n]` in the text (n a whole number) and may return a
 * Node to put there (else the text stays); `key` names the options: blocks are rebuilt when it
 * changes (e.g. when the citable sources change).
 */

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
const EMPTY_ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])[ \t]*$/;
const BLANK = /^[ \t]*$/;
const ESCAPABLE = "\\`*_{}[]()#+-.!~|>";
const SAFE_URL = /^https?:\/\/[^\s<>"]+$/i;

// ----- blocks

/**
 * Splits text into blocks: {type, raw, ...}. `raw` is the block's source, which is what tells an
 * unchanged block from a changed one when the text grows.
 */
export function parseBlocks(text) {
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i++;
      continue;
    }
    const start = i;
    let match;
    if ((match = FENCE.exec(line))) {
      const fence = match[1];
      const body = [];
      let closed = false;
      for (i++; i < lines.length; i++) {
        const closing = lines[i].trim();
        if (closing[0] === fence[0] && closing.length >= fence.length && /^(`+|~+)$/.test(closing)) {
          closed = true;
          i++;
          break;
        }
        body.push(lines[i]);
      }
      blocks.push({type: "code", lang: match[2], code: body.join("\n"), open: !closed});
    } else if ((match = HEADING.exec(line))) {
      blocks.push({type: "heading", level: match[1].length, text: match[2] || ""});
      i++;
    } else if (RULE.test(line)) {
      blocks.push({type: "rule"});
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        body.push(match[1]);
        i++;
      }
      blocks.push({type: "quote", text: body.join("\n")});
    } else if (ITEM.test(line) || EMPTY_ITEM.test(line)) {
      i = parseList(lines, i, blocks);
    } else {
      const body = [];
      while (i < lines.length && !BLANK.test(lines[i]) && (i === start || !startsBlock(lines[i]))) {
        body.push(lines[i]);
        i++;
      }
      blocks.push({type: "paragraph", text: body.join("\n")});
    }
    blocks[blocks.length - 1].raw = lines.slice(start, i).join("\n");
  }
  return blocks;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    ITEM.test(line);
}

function itemMatch(line) {
  const match = ITEM.exec(line) || EMPTY_ITEM.exec(line);
  if (!match) return null;
  const text = match[3] || "";
  return {indent: match[1].length, marker: match[2], text, ordered: /\d/.test(match[2]),
    content: text ? line.length - text.length : match[1].length + match[2].length + 1};
}

/** A list from lines[i]: items are lines at the first item's indentation; deeper lines (and
 * lazy continuation lines) belong to the item above, parsed again as blocks (nested lists). */
function parseList(lines, i, blocks) {
  const first = itemMatch(lines[i]);
  const list = {type: "list", ordered: first.ordered, start: parseInt(first.marker, 10) || 1,
    items: []};
  let item = null;
  let content = first.content; // the column the current item's text starts at
  let blankBefore = false;
  for (; i < lines.length; i++) {
    const line = lines[i];
    if (BLANK.test(line)) {
      blankBefore = true;
      continue;
    }
    const match = itemMatch(line);
    const indent = line.length - line.trimStart().length;
    if (match && match.indent <= first.indent + 1) {
      if (match.ordered !== first.ordered) break; // another kind of list starts
      item = [match.text];
      content = match.content;
      list.items.push(item);
    } else if (indent > first.indent + 1 && item) {
      item.push((blankBefore ? "\n" : "") + line.slice(Math.min(indent, content)));
    } else if (!blankBefore && item && !startsBlock(line)) {
      item.push(line.trim()); // a lazy continuation of the item's paragraph
    } else {
      break;
    }
    blankBefore = false;
  }
  // Leave trailing blank lines to the caller.
  while (i > 0 && BLANK.test(lines[i - 1])) i--;
  blocks.push(list);
  return i;
}

// ----- rendering

/**
 * Renders text into element (replacing what is there, keeping the blocks that did not change).
 *
 * Args:
 *   element (Element): where the rendered blocks go; it gets the class "md".
 *   text (string): Markdown.
 *   options ({citation?: (n: number) => Node | null, key?: string}): see the module comment.
 */
export function renderMarkdown(element, text, options = {}) {
  element.classList.add("md");
  const blocks = parseBlocks(text || "");
  const key = String(options.key ?? "");
  const previous = element._mdBlocks || [];
  if (element._mdKey !== key || element.children.length !== previous.length) {
    element.replaceChildren();
    previous.length = 0;
  }
  const kept = [];
  blocks.forEach((block, index) => {
    const before = previous[index];
    const existing = element.children[index];
    if (before && existing && before.raw === block.raw && before.type === block.type) {
      kept.push(before);
      return;
    }
    if (before && existing && block.type === "code" && before.type === "code" &&
        before.lang === block.lang) {
      updateCode(existing, block); // a growing code block: same element, new text
    } else {
      const node = renderBlock(block, options);
      if (existing) existing.replaceWith(node);
      else element.append(node);
    }
    kept.push(block);
  });
  while (element.children.length > blocks.length) element.lastElementChild.remove();
  element._mdBlocks = kept;
  element._mdKey = key;
}

/** The rendered blocks of text as a DocumentFragment (for text that does not stream). */
export function markdownFragment(text, options = {}) {
  const fragment = document.createDocumentFragment();
  for (const block of parseBlocks(text || "")) fragment.append(renderBlock(block, options));
  return fragment;
}

function make(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function renderBlock(block, options) {
  switch (block.type) {
    case "code":
      return codeBlock(block);
    case "heading":
      return make(`h${block.level}`, "", ...inline(block.text, options));
    case "rule":
      return make("hr");
    case "quote":
      return make("blockquote", "", markdownFragment(block.text, options));
    case "list": {
      const list = make(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.start = block.start;
      for (const lines of block.items) {
        const item = make("li");
        const tight = !lines.some((line) => line.startsWith("\n")); // no blank line inside
        for (const b of parseBlocks(lines.join("\n"))) {
          if (tight && b.type === "paragraph") item.append(...inline(b.text, options));
          else item.append(renderBlock(b, options));
        }
        list.append(item);
      }
      return list;
    }
    default:
      return make("p", "", ...inline(block.text, options));
  }
}

function codeBlock(block) {
  const code = make("code");
  const language = make("span", "lang");
  const copy = make("button", "copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy code");
  copy.addEventListener("click", () => copyCode(copy, code.textContent));
  const wrapper = make("div", "code-block", make("div", "code-head", language, copy),
    make("pre", "", code));
  updateCode(wrapper, block);
  return wrapper;
}

function updateCode(wrapper, block) {
  const code = wrapper.querySelector("code");
  if (code.textContent !== block.code) code.textContent = block.code;
  code.className = block.lang ? `language-${block.lang.replace(/[^\w+#.-]/g, "")}` : "";
  wrapper.querySelector(".lang").textContent = block.lang || "code";
  wrapper.classList.toggle("open", block.open);
}

async function copyCode(button, text) {
  let copied = false;
  try {
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch {
    // No clipboard API (not a secure context, or denied): copy through a selected textarea.
    const area = make("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
  }
  button.textContent = copied ? "Copied" : "Copy failed";
  clearTimeout(button._timer);
  button._timer = setTimeout(() => (button.textContent = "Copy"), 1500);
}

// ----- inline

function isSpace(c) {
  return c === undefined || /\s/.test(c);
}

function isWordChar(c) {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

/** Where a delimiter run (`**`, `*`, `__`, `_`, `~~`) opened at `from` closes, or -1. */
function closingOf(text, delim, from) {
  for (let j = from; j < text.length; j++) {
    const c = text[j];
    if (c === "\\") {
      j++;
      continue;
    }
    if (c === "`") {
      const run = /^`+/.exec(text.slice(j))[0];
      const end = text.indexOf(run, j + run.length);
      if (end > 0) j = end + run.length - 1;
      continue;
    }
    if (!text.startsWith(delim, j) || isSpace(text[j - 1])) continue;
    if (delim.length === 1 && text[j + 1] === delim) {
      j++; // a double delimiter inside single emphasis: skip it whole
      continue;
    }
    if (delim[0] === "_" && isWordChar(text[j + delim.length])) continue;
    return j;
  }
  return -1;
}

const STYLE_OF = {"**": "strong", "__": "strong", "~~": "del", "*": "em", "_": "em"};

/** The inline content of text as a list of Nodes. */
export function inline(text, options = {}) {
  const nodes = [];
  let buffer = "";
  const flush = () => {
    if (buffer) nodes.push(document.createTextNode(buffer));
    buffer = "";
  };
  const push = (node) => {
    flush();
    nodes.push(node);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);
    let match;
    if (c === "\\" && ESCAPABLE.includes(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
    } else if (c === "\n") {
      push(document.createElement("br"));
      i++;
    } else if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const end = text.indexOf(run, i + run.length);
      if (end < 0 || text[end + run.length] === "`") {
        buffer += run;
        i += run.length;
        continue;
      }
      let code = text.slice(i + run.length, end).replace(/\n/g, " ");
      if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
      push(make("code", "", code));
      i = end + run.length;
    } else if (c === "[" && (match = /^\[((?:[^\[\]\n]|\[[^\[\]\n]*\])+)\]\(\s*<?([^\s()<>]+(?:\([^\s()<>]*\))?[^\s()<>]*)>?(?:\s+"[^"\n]*")?\s*\)/.exec(rest))) {
      const [whole, label, url] = match;
      if (SAFE_URL.test(url)) push(link(url, inline(label, options)));
      else nodes.push(...(flush(), inline(label, options)));
      i += whole.length;
    } else if (c === "[" && options.citation && (match = /^\[(\d{1,4})\]/.exec(rest))) {
      const node = options.citation(Number(match[1]));
      if (node) push(node);
      else buffer += match[0];
      i += match[0].length;
    } else if (c === "<" && (match = /^<(https?:\/\/[^\s<>"]+)>/i.exec(rest))) {
      push(link(match[1], [match[1]]));
      i += match[0].length;
    } else if ((c === "h" || c === "H") && !isWordChar(text[i - 1]) &&
               (match = /^https?:\/\/[^\s<>"]+/i.exec(rest))) {
      const url = trimUrl(match[0]);
      push(link(url, [url]));
      i += url.length;
    } else if (c === "*" && rest.startsWith("***") && !isSpace(text[i + 3]) &&
               (match = /^\*\*\*([^*\n]*[^*\s])\*\*\*/.exec(rest))) {
      push(make("strong", "", make("em", "", ...inline(match[1], options))));
      i += match[0].length;
    } else if ((c === "*" || c === "_" || c === "~") && (match = /^(\*\*|__|~~|\*|_)/.exec(rest))) {
      const delim = match[1];
      const opens = !isSpace(text[i + delim.length]) && delim !== "~" &&
        !(delim[0] === "_" && isWordChar(text[i - 1]));
      const end = opens ? closingOf(text, delim, i + delim.length + 1) : -1;
      if (end < 0) {
        buffer += delim;
        i += delim.length;
        continue;
      }
      push(make(STYLE_OF[delim], "", ...inline(text.slice(i + delim.length, end), options)));
      i = end + delim.length;
    } else {
      buffer += c;
      i++;
    }
  }
  flush();
  return nodes;
}

/** A bare URL without the punctuation that ends its sentence (and an unmatched ")"). */
function trimUrl(url) {
  for (;;) {
    const last = url[url.length - 1];
    if (".,;:!?'*_~".includes(last)) url = url.slice(0, -1);
    else if (last === ")" && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) {
      url = url.slice(0, -1);
    } else return url;
  }
}

function link(url, children) {
  const a = make("a", "", ...children);
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}
