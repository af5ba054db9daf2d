"""The llama4_chat page (endpoints/llama4_chat/page.html, frontend/pages/chat.js) in real headless
Chromium, against the real server and a real `jobhive-worker llama4 --tiny` (conftest's
chat_server, shared with test_llama4.py).

The tiny model's text is gibberish, but it streams like a real one: with ignore_eos and a large
max_new_tokens a reply lasts long enough to watch it grow and to stop it. Being random, the text
may begin with, or be nothing but, whitespace or odd characters: the tests watch the token count
and the raw text's length, never what the text says or whether it shows. The Markdown renderer
(frontend/markdown.js) is checked in the same browser on fixed strings.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from playwright.async_api import Page, expect

TIMEOUT_MS = 20_000

# Records the reply being written as the page draws it: a snapshot of its raw text, its meta
# line ("12 tokens") and its status at every change. The tiny model's text is random: it may
# start with (or be all) whitespace, a form feed or pieces of characters, so a test reads the
# streaming from the token count the page shows, never from what the text says.
WATCH_REPLY = """() => {
  window.replySeen = [];
  new MutationObserver(() => {
    const turn = document.querySelector('.turn.assistant:last-of-type');
    if (!turn) return;
    const now = {text: turn.querySelector('.body').textContent,
                 meta: turn.querySelector('.meta').textContent, status: turn.dataset.status};
    const seen = window.replySeen;
    const last = seen[seen.length - 1];
    if (!last || ['text', 'meta', 'status'].some((k) => last[k] !== now[k])) seen.push(now);
  }).observe(document.getElementById('conversation'),
             {childList: true, subtree: true, characterData: true, attributes: true,
              attributeFilter: ['data-status']});
}"""
# The token counts the page showed while the reply streamed, in the order it showed them.
STREAMED_COUNTS = """() => window.replySeen
  .filter((s) => s.status === 'streaming' && /^\\d+ tokens$/.test(s.meta))
  .map((s) => parseInt(s.meta, 10))"""


async def settings_open(page: Page, want: bool) -> None:
    """Opens (or closes) the settings panel with a click on its summary, unless it already is
    (a click on an open panel would close it), and waits until it is."""
    panel = page.locator("#settings-panel")
    await expect(panel).to_be_visible()
    if await panel.evaluate("el => el.open") != want:
        await panel.locator("summary").click()
    await expect(panel).to_have_js_property("open", want)


async def set_setting(page: Page, name: str, value: str | bool) -> None:
    control = page.locator(f"#input-{name}")
    if isinstance(value, bool):
        await control.set_checked(value)
    else:
        await control.fill(value)
    await control.dispatch_event("change")


async def until_page(page: Page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Waits until the expression is true on the page. (Not wait_for_function: that evals the
    expression in the page, which a Content-Security-Policy without 'unsafe-eval' refuses.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await page.evaluate(expression):
        assert loop.time() < deadline, f"not true within {timeout_s} s: {expression}"
        await asyncio.sleep(0.05)


async def kept_chat(page: Page) -> dict:
    return json.loads(await page.evaluate("localStorage.getItem('jobhive.chat.llama4_chat')"))


async def test_a_reply_streams_stops_and_the_chat_survives_a_reload(chat_server, browser):
    server, _ = chat_server
    page = await browser.open(f"{server.url}/llama4_chat")
    await expect(page.locator("h1")).to_have_text("Llama 4 chat")
    await page.locator("#system-panel summary").click()
    await page.locator("#system").fill("You are terse.")
    await settings_open(page, True)
    await set_setting(page, "max_new_tokens", "2000")
    await set_setting(page, "ignore_eos", True)
    await set_setting(page, "temperature", "1")
    await page.evaluate(WATCH_REPLY)

    # Enter sends; the reply streams: the page shows it growing before it ends.
    await page.locator("#prompt").fill("Hello there!")
    await page.locator("#prompt").press("Enter")
    user = page.locator(".turn.user")
    await expect(user).to_have_count(1)
    await expect(user.locator(".body")).to_have_text("Hello there!")
    await expect(page.locator("#prompt")).to_have_value("")
    reply = page.locator(".turn.assistant")
    await until_page(page, f"new Set(({STREAMED_COUNTS})()).size >= 2")
    await expect(reply).to_have_attribute("data-status", "streaming")
    counts = await page.evaluate(STREAMED_COUNTS)
    assert counts == sorted(counts) and counts[0] >= 1 and len(set(counts)) >= 2, counts
    await browser.screenshot(page, "streaming")

    # Stop: the job ends canceled, the partial reply stays, marked stopped.
    await page.locator("#stop").click()
    await expect(reply).to_have_attribute("data-status", "stopped", timeout=TIMEOUT_MS)
    await expect(reply.locator(".meta")).to_contain_text("stopped")
    await expect(page.locator("#send")).to_be_visible()
    partial = await reply.locator(".body").inner_text()  # may be blank: the text is random
    kept = await kept_chat(page)
    assert kept["system"] == "You are terse."
    assert [m["role"] for m in kept["messages"]] == ["user", "assistant"]
    stopped = kept["messages"][1]
    # The partial reply stays: its raw text (a progress report is sent only when the text
    # grew, so it is never empty, whatever characters it has).
    assert stopped["status"] == "stopped" and len(stopped["content"]) > 0, stopped
    async with httpx.AsyncClient() as client:
        job = (await client.get(f"{server.url}/api/v1/jobs/{stopped['jobId']}")).json()
    assert job["status"] == "canceled", job
    assert counts[-1] <= job["progress_outputs"]["tokens"] < 2000

    # A reload shows the same conversation, system prompt and settings.
    await page.reload()
    await expect(page.locator(".turn")).to_have_count(2)
    await expect(page.locator(".turn.user .body")).to_have_text("Hello there!")
    await expect(reply).to_have_attribute("data-status", "stopped")
    assert await reply.locator(".body").inner_text() == partial
    assert (await kept_chat(page))["messages"][1]["content"] == stopped["content"]
    await expect(page.locator("#system")).to_have_value("You are terse.")
    await expect(page.locator("#input-max_new_tokens")).to_have_value("2000")
    await browser.screenshot(page, "reloaded")


async def test_regenerate_replaces_the_last_reply_and_new_chat_clears(chat_server, browser):
    server, _ = chat_server
    page = await browser.open(f"{server.url}/llama4_chat", phone=True)
    await settings_open(page, True)
    await set_setting(page, "max_new_tokens", "6")
    await set_setting(page, "ignore_eos", True)
    await settings_open(page, False)
    await page.locator("#prompt").fill("First line")
    await page.locator("#prompt").press("Shift+Enter")  # a new line, not a send
    await page.locator("#prompt").type("second line")
    await expect(page.locator(".turn")).to_have_count(0)
    await page.locator("#send").click()
    await expect(page.locator(".turn.user .body")).to_have_text("First line\nsecond line")
    reply = page.locator(".turn.assistant")
    await expect(reply).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(reply.locator(".meta")).to_contain_text("length · 6 tokens")
    first_job = (await kept_chat(page))["messages"][1]["jobId"]

    await reply.locator("button.regenerate").click()
    await expect(page.locator(".turn")).to_have_count(2)
    await expect(reply).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    kept = await kept_chat(page)
    assert len(kept["messages"]) == 2 and kept["messages"][1]["jobId"] != first_job
    # The page fits a phone: nothing is wider than the screen.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    await browser.screenshot(page, "phone")

    await page.locator("#new-chat").click()
    await expect(page.locator(".turn")).to_have_count(0)
    assert (await kept_chat(page))["messages"] == []


MARKDOWN_CASES = """async () => {
  const {markdownFragment, renderMarkdown} = await import('/static/markdown.js');
  const html = (text) => {
    const div = document.createElement('div');
    div.append(markdownFragment(text));
    return div.innerHTML;
  };
  const streamed = document.createElement('div');
  renderMarkdown(streamed, 'Intro\\n\\n```py\\nprint(1)');
  const intro = streamed.firstElementChild;
  renderMarkdown(streamed, 'Intro\\n\\n```py\\nprint(1)\\nprint(2)\\n```\\n\\nDone');
  return {
    unsafe: html('<img src=x onerror=alert(1)> <script>x()</script> [a](javascript:alert(1))'),
    styles: html('**bold** *em* `a<b>` ~~gone~~ snake_case_name'),
    list: html('# Title\\n\\n- one\\n- two\\n  1. nested\\n\\n> quoted'),
    link: html('[docs](https://example.com/a) and https://example.org/x.'),
    open: html('```js\\nlet a = 1;'),
    streamed: streamed.innerHTML,
    introKept: streamed.firstElementChild === intro,
  };
}"""


async def test_markdown_renders_a_safe_subset(chat_server, browser):
    server, _ = chat_server
    page = await browser.open(f"{server.url}/llama4_chat")
    out = await page.evaluate(MARKDOWN_CASES)
    # Nothing of the text becomes HTML, and only http(s) links are made.
    assert "<img" not in out["unsafe"] and "<script" not in out["unsafe"], out["unsafe"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in out["unsafe"]
    assert "<a" not in out["unsafe"] and "javascript" not in out["unsafe"], out["unsafe"]
    assert out["styles"] == (
        "<p><strong>bold</strong> <em>em</em> <code>a&lt;b&gt;</code> <del>gone</del> "
        "snake_case_name</p>"
    )
    assert out["list"].startswith("<h1>Title</h1><ul><li>one</li><li>two<ol><li>nested</li>")
    assert "<blockquote><p>quoted</p></blockquote>" in out["list"]
    assert '<a href="https://example.com/a"' in out["link"]
    assert '<a href="https://example.org/x"' in out["link"] and "</a>." in out["link"]
    # An unclosed fence is a code block up to the end (marked open); it closes in place.
    assert 'class="code-block open"' in out["open"] and "let a = 1;" in out["open"]
    assert "<button" in out["open"]
    assert 'class="code-block"' in out["streamed"] and "print(2)" in out["streamed"]
    assert out["streamed"].endswith("<p>Done</p>") and out["introKept"]
