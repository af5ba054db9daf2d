"""The sd3 demo page (endpoints/sd3/page.html, frontend/pages/sd3.js) end to end in real headless
Chromium, against the real server and a real `jobhive-worker sd3 --tiny --device cpu`.

The tiny model's images are noise, but it runs the real pipeline: previews, seeds, image-to-image
and cancel behave as with real weights. One server and one worker (conftest's sd3) serve the
module and test_sd3.py, the next file in the same test process; every test fails on a console
error of its pages (the `browser` fixture, tests/browser.py) and leaves a screenshot in
artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.async_api import Page, expect

TIMEOUT_MS = 45_000  # a job on the tiny model, on a busy 2-core machine
# Collects every distinct preview the page shows (the tiles' src) until the final images come.
WATCH_PREVIEWS = """() => {
  window.previewsSeen = [];
  const previews = document.getElementById("previews");
  new MutationObserver(() => {
    for (const tile of previews.querySelectorAll("img.tile:not(.final)")) {
      if (tile.src && !window.previewsSeen.includes(tile.src)) window.previewsSeen.push(tile.src);
    }
  }).observe(previews, {subtree: true, childList: true, attributeFilter: ["src"]});
}"""
DROP_FILE = """async ([data, name]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/png"}));
  const zone = document.getElementById("drop-zone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
    zone.dispatchEvent(new DragEvent(type, init));
  }
}"""


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


async def open_page(browser, url: str, **kwargs) -> Page:
    page = await browser.open(url + "/sd3", **kwargs)
    await expect(page.locator("main#sd3")).to_have_attribute("aria-busy", "false")
    await expect(page.locator("#generate")).to_be_enabled()
    return page


async def fill(page: Page, **values) -> None:
    for name, value in values.items():
        await page.locator(f"#{name}").fill(str(value))


def newest(page: Page):
    return page.locator("#gallery .result").first


@pytest.mark.timeout(120)  # the first test of the module also builds the tiny model
async def test_previews_sharpen_then_the_final_images_join_the_gallery(sd3, browser):
    server, _ = sd3
    page = await open_page(browser, server.url)
    # The controls carry the endpoint's limits and defaults, read from its schema.
    width = page.locator("#width")
    for attribute, value in (("min", "64"), ("max", "1536"), ("step", "16")):
        await expect(width).to_have_attribute(attribute, value)
    await expect(width).to_have_value("1024")
    await expect(page.locator("#steps")).to_have_value("28")
    await expect(page.locator("#preview option")).to_have_text(["none", "latent", "vae"])
    await expect(page.locator('[data-field="strength"]')).to_be_hidden()
    await expect(page.locator("#workers")).to_contain_text("1 worker online")

    await page.evaluate(WATCH_PREVIEWS)
    await fill(page, prompt="a red cat", width=128, height=128, steps=100, num_images=2, seed=42)
    await page.locator("#more summary").click()
    await page.locator("#preview").select_option("latent")
    await fill(page, preview_every_n_steps=1)
    await page.locator("#generate").click()
    await expect(page.locator("#cancel")).to_be_visible()

    result = newest(page)
    await expect(result).to_be_visible(timeout=TIMEOUT_MS)
    seen = await page.evaluate("window.previewsSeen")
    assert len(seen) >= 2, f"{len(seen)} distinct previews"
    assert all(src.startswith("data:image/jpeg;base64,") for src in seen)
    # the live area ends on the final images; the gallery has them with seed and settings
    await expect(page.locator("#previews img.final")).to_have_count(2)
    await expect(page.locator(".job-status")).to_have_attribute("data-status", "done")
    await expect(page.locator("#cancel")).to_be_hidden()
    images = result.locator(".result-image")
    await expect(images).to_have_count(2)
    await expect(images.locator(".seed")).to_have_text(["Seed 42", "Seed 43"])
    await expect(images.first.locator("a[download]")).to_have_attribute("download",
                                                                        "sd3-42-a-red-cat.png")
    await expect(result.locator('dd[data-setting="size"]')).to_have_text("128×128")
    await expect(result.locator('dd[data-setting="steps"]')).to_have_text("100")
    await expect(result.locator('dd[data-setting="mode"]')).to_have_text("text-to-image")
    await expect(result.locator('dd[data-setting="strength"]')).to_have_count(0)
    src = await images.first.locator("img").get_attribute("src")
    # the image is the job's file, loaded from its URL (no base64 in the page)
    assert src is not None and src.endswith("/files/images-0.png"), src
    loaded = await images.first.locator("img").evaluate("img => img.complete && img.naturalWidth")
    assert loaded == 128

    # clicking an image shows it large
    await images.nth(1).locator("button.image-button").click()
    viewer = page.locator("#viewer")
    await expect(viewer).to_be_visible()
    await expect(viewer.locator("figcaption")).to_contain_text("seed 43")
    await browser.screenshot(page, "viewer")
    await viewer.locator("#viewer-close").click()
    await expect(viewer).to_be_hidden()

    # "Use seed" takes an image's seed back into the form; "Random" asks for a new one
    await images.nth(1).locator("button", has_text="Use seed").click()
    await expect(page.locator("#seed")).to_have_value("43")
    await page.locator("#seed-random").click()
    await expect(page.locator("#seed")).to_have_value("-1")
    await browser.screenshot(page, "wide")

    # usable on a phone: one column, nothing wider than the screen
    await page.set_viewport_size({"width": 375, "height": 740})
    overflow = await page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 375
    await browser.screenshot(page, "phone")


async def test_img2img_from_a_chosen_file_and_from_a_dropped_one(sd3, browser, tmp_path: Path):
    server, _ = sd3
    page = await open_page(browser, server.url, phone=True)
    await fill(page, prompt="a blue boat", width=64, height=64, steps=4, num_images=1, seed=7)
    strength = page.locator('[data-field="strength"]')

    # 1. choose a file (the file input inside the drop zone)
    start = tmp_path / "start.png"
    start.write_bytes(png_bytes((200, 30, 30)))
    await page.locator("#image").set_input_files(start)
    await expect(page.locator("#chosen")).to_be_visible()
    await expect(page.locator("#image-name")).to_have_text("start.png")
    await expect(strength).to_be_visible()
    await expect(page.locator("#strength")).to_have_value("0.6")  # the schema's default
    await page.locator("#generate").click()
    result = newest(page)
    await expect(result).to_be_visible(timeout=TIMEOUT_MS)
    await expect(result.locator('dd[data-setting="strength"]')).to_have_text("0.6")
    await expect(result.locator('dd[data-setting="mode"]')).to_have_text("image-to-image")
    await expect(result.locator('dd[data-setting="size"]')).to_have_text("64×64")
    await browser.screenshot(page, "img2img-file")

    # removing the image hides the strength again
    await page.locator("#image-remove").click()
    await expect(page.locator("#chosen")).to_be_hidden()
    await expect(strength).to_be_hidden()

    # 2. drag and drop a file onto the zone
    dropped = base64.b64encode(png_bytes((30, 30, 200))).decode()
    await page.evaluate(DROP_FILE, [dropped, "dropped.png"])
    await expect(page.locator("#image-name")).to_have_text("dropped.png")
    await expect(strength).to_be_visible()
    await page.locator("#strength").fill("0.5")
    await expect(page.locator("#strength-value")).to_have_text("0.5")
    await page.locator("#generate").click()
    await expect(page.locator("#gallery .result")).to_have_count(2, timeout=TIMEOUT_MS)
    result = newest(page)  # newest first
    await expect(result.locator('dd[data-setting="strength"]')).to_have_text("0.5")
    await expect(result.locator('dd[data-setting="mode"]')).to_have_text("image-to-image")
    await expect(page.locator("#gallery .result").nth(1)
                 .locator('dd[data-setting="strength"]')).to_have_text("0.6")
    await browser.screenshot(page, "img2img-dropped")


async def test_cancel_stops_a_long_job(sd3, browser):
    server, worker = sd3
    since = len(worker.output)  # the worker is shared (conftest's sd3): its lines from here on
    page = await open_page(browser, server.url)
    # 4 images of 768x768 in 100 steps: about a minute on the tiny model on 2 CPU cores, so
    # the job is surely still running when it is canceled (256x256 took 2 s on a fast CI host)
    await fill(page, prompt="long", width=768, height=768, steps=100, num_images=4, seed=3)
    await page.locator("#generate").click()
    status = page.locator(".job-status")
    await expect(status).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
    await expect(page.locator("#preview-caption")).to_contain_text(re.compile(r"Step \d+ of 100"),
                                                                   timeout=TIMEOUT_MS)
    await expect(page.locator("#previews .frame")).to_have_count(4)
    await expect(page.locator("#previews .frame img.tile")).to_have_count(4, timeout=TIMEOUT_MS)

    # meanwhile a second job waits in the queue (its page says so), and is canceled there
    other = await open_page(browser, server.url, phone=True)
    await fill(other, prompt="waits", width=64, height=64, steps=2)
    await other.locator("#generate").click()
    other_status = other.locator(".job-status")
    await expect(other_status).to_have_attribute("data-status", "queued", timeout=TIMEOUT_MS)
    await expect(other_status).to_contain_text("Queued")
    await browser.screenshot(other, "queued")
    await other.locator("#cancel").click()
    await expect(other_status).to_have_attribute("data-status", "canceled", timeout=TIMEOUT_MS)
    await expect(other.locator("#preview-caption")).to_have_text("Canceled.")
    await expect(other.locator("#gallery .result")).to_have_count(0)

    await page.locator("#cancel").click()
    await expect(status).to_have_attribute("data-status", "canceled", timeout=TIMEOUT_MS)
    await expect(status).to_contain_text("Canceled")
    await expect(page.locator("#preview-caption")).to_have_text(re.compile(r"Canceled at step \d+"))
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#generate")).to_be_enabled()
    await expect(page.locator("#gallery .result")).to_have_count(0)
    caption = await page.locator("#preview-caption").text_content()
    assert caption is not None
    assert int(re.search(r"\d+", caption).group()) < 100  # type: ignore[union-attr]
    await asyncio.to_thread(worker.wait_for_output, r"was canceled while running", 30, since)
    await browser.screenshot(page, "canceled")


async def test_a_refused_value_is_shown_next_to_its_control(sd3, browser):
    server, _ = sd3
    browser.allow(r"status of 400")  # the refused submit: Chromium logs every 4xx of fetch()
    page = await open_page(browser, server.url)
    # Past the browser's own checks (the form sends what it is given; the server judges).
    await page.evaluate("document.getElementById('width').value = '72'")
    await page.locator("#generate").click()
    error = page.locator('[data-field="width"] .field-error')
    await expect(error).to_contain_text("multiple of 16", timeout=TIMEOUT_MS)
    await expect(error).to_contain_text("64 or 80")
    await expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator(".error-banner")).to_be_visible()
    await expect(page.locator(".field-error")).to_have_count(1)
    await expect(page.locator("#generate")).to_be_enabled()
    await browser.screenshot(page, "field-error")

    # a fixed value clears the message at the next submit
    await fill(page, width=64, height=64, steps=2)
    await page.locator("#generate").click()
    await expect(newest(page)).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.locator(".field-error")).to_have_count(0)
    await expect(page.locator("#width")).not_to_have_attribute("aria-invalid", "true")
