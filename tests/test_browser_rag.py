"""The retrieval page (endpoints/rag_search/page.html, frontend/pages/rag.js) in real headless
Chromium, against the real server, `jobhive-worker rag` and `jobhive-worker llama4 --tiny --index`
over an index built by the real `jobhive-index` CLI: conftest's rag_server over rag_corpus, the
ones test_rag.py uses (this file runs next to it, in the same test process, and shares them).

The text side of the index runs the real sentence model, so a question finds its paragraph; CLIP
is tiny and random, but an image still finds itself. The tiny chat model writes gibberish
without citations, so the [n] links are checked by rendering a fixed answer with the page's own
citation linker next to the real source cards.
"""

from __future__ import annotations

import pytest
from playwright.async_api import expect

TIMEOUT_MS = 20_000
# A question about one paragraph of rag_corpus (its file and a phrase of it), in other words.
SHOE_QUESTION = {"question": "Which running shoe is red and light?", "source": "shoes.md",
                 "phrase": "Ember Sprint"}
BREAD_QUESTION = {"question": "How do I bake sourdough with a crackling crust?",
                  "source": "bread.txt", "phrase": "crust crackles"}


@pytest.mark.timeout(120)  # the first test also builds the index and starts both workers
async def test_a_search_finds_its_paragraph_first_and_an_image_finds_itself(
    rag_server, rag_corpus, browser
):
    server = rag_server[0]
    wanted = SHOE_QUESTION
    page = await browser.open(f"{server.url}/rag_search")
    await expect(page.locator("h1")).to_have_text("Search documents and images")
    await expect(page.locator("#tab-search")).to_have_attribute("aria-selected", "true")

    await page.locator("#query").fill(wanted["question"])
    await page.locator("#query").press("Enter")
    cards = page.locator("#results .source-card")
    await expect(cards.first).to_be_visible(timeout=TIMEOUT_MS)
    card = page.locator('#results .source-card[data-kind="text"]').first  # the best text hit
    await expect(card).to_contain_text(wanted["phrase"])
    await expect(card).to_have_attribute("data-kind", "text")
    await expect(card.locator(".where")).to_contain_text(wanted["source"])
    await expect(card.locator(".where")).to_contain_text("bytes")
    await expect(card.locator(".score")).to_contain_text("score")
    await expect(card.locator("mark").first).to_be_visible()  # the query's words are marked
    await expect(page.locator("#search-summary")).to_contain_text("results in")
    await browser.screenshot(page, "text-search")

    # An image alone, images only: the same picture comes first, as a thumbnail.
    await page.locator("#query").fill("")
    await page.locator("#image-file").set_input_files(rag_corpus / "red-box.png")
    await expect(page.locator("#image-preview")).to_be_visible()
    await page.locator("#input-kinds").select_option(label="image")
    await page.locator("#search").click()
    first = cards.first
    await expect(first.locator(".where")).to_contain_text("red-box.png", timeout=TIMEOUT_MS)
    await expect(first).to_have_attribute("data-kind", "image")
    src = await first.locator("img.thumb").get_attribute("src")
    assert src and src.startswith("data:image/"), src
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1100, width
    await browser.screenshot(page, "image-search")


async def test_the_chat_tab_streams_an_answer_with_numbered_linked_sources(rag_server, browser):
    server = rag_server[0]
    wanted = BREAD_QUESTION
    page = await browser.open(f"{server.url}/rag_search#chat", phone=True)
    await expect(page.locator("#tab-chat")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#panel-search")).to_be_hidden()
    await page.locator("#chat-settings-panel summary").click()
    await page.locator("#input-max_new_tokens").fill("12")
    await page.locator("#chat-settings-panel summary").click()

    await page.locator("#question").fill(wanted["question"])
    await page.locator("#question").press("Enter")
    answer = page.locator("#turn-0 .turn.assistant")
    await expect(answer).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    sources = answer.locator(".source-card")
    await expect(sources).to_have_count(4)  # num_sources' default
    assert [await s.get_attribute("data-n") for s in await sources.all()] == ["1", "2", "3", "4"]
    await expect(sources.first).to_contain_text(wanted["source"])  # the best one first
    await expect(sources.first).to_contain_text(wanted["phrase"])
    await expect(answer.locator(".meta")).to_contain_text("tokens")

    # The page's citation linker on an answer that cites: [n] of a listed source is a link to
    # its card (other numbers stay text); a click scrolls to the card and highlights it.
    await page.evaluate("""async () => {
      const {renderAnswer} = await import('/static/pages/sources.js');
      const cards = document.querySelectorAll('#turn-0 .source-card');
      const sources = Array.from(cards, (card) => ({n: Number(card.dataset.n)}));
      const probe = document.createElement('div');
      probe.id = 'probe';
      document.querySelector('#turn-0 .turn.assistant .body').after(probe);
      renderAnswer(probe, 'Mix **500 g** of flour [1]; shape it [4][2], not [9].', sources,
                   'source-0-');
    }""")
    links = page.locator("#probe a.citation")
    await expect(links).to_have_text(["[1]", "[4]", "[2]"])
    assert [await a.get_attribute("href") for a in await links.all()] == [
        "#source-0-1", "#source-0-4", "#source-0-2"]
    await expect(page.locator("#probe")).to_contain_text("not [9].")
    await page.evaluate("window.scrollTo(0, 0)")
    await links.nth(1).click()
    target = page.locator("#source-0-4")
    await expect(target).to_have_class("source-card card highlight")
    await expect(target).to_be_focused()
    await expect(target).to_be_in_viewport()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    await browser.screenshot(page, "chat-phone")


async def test_the_chat_tab_keeps_its_chat_over_a_reload(rag_server, browser):
    server = rag_server[0]
    wanted = BREAD_QUESTION
    page = await browser.open(f"{server.url}/rag_search#chat")
    await page.locator("#chat-settings-panel summary").click()
    await page.locator("#input-max_new_tokens").fill("8")
    await page.locator("#question").fill(wanted["question"])
    await page.locator("#question").press("Enter")
    answer = page.locator("#turn-0 .turn.assistant")
    await expect(answer).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    text = await answer.locator(".body").inner_text()
    sources = [await s.get_attribute("data-n")
               for s in await answer.locator(".source-card").all()]

    # A reload shows the same question, answer and source cards, on the chat tab.
    await page.reload()
    await expect(page.locator("#tab-chat")).to_have_attribute("aria-selected", "true")
    await expect(page.locator(".rag-turn")).to_have_count(1)
    await expect(page.locator("#turn-0 .turn.user .body")).to_have_text(wanted["question"])
    await expect(answer).to_have_attribute("data-status", "done")
    assert await answer.locator(".body").inner_text() == text
    await expect(answer.locator(".source-card")).to_have_count(len(sources))
    await expect(page.locator("#empty")).to_be_hidden()

    # New chat forgets it, over a reload too.
    await page.locator("#new-chat").click()
    await expect(page.locator(".rag-turn")).to_have_count(0)
    await page.reload()
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator(".rag-turn")).to_have_count(0)
