"""File outputs on the generic demo page, in real headless Chromium against a real server: the
test plays the worker (it uploads a PNG and posts the result that references it), and the page
shows the image from the file: from its own URL on an open endpoint, from a blob: URL fetched
with the key on a keyed one (an <img> cannot send a key), with the page's CSP as served.
"""

from __future__ import annotations

import io
import re

import httpx
from conftest import ECHO_WORKER_KEY
from e2e_http import echo_variant
from PIL import Image
from playwright.async_api import expect

TIMEOUT_MS = 15_000
SECRET = "browser-files-key"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 220)).save(buffer, format="PNG")
    return buffer.getvalue()


async def work_one_job(url: str, job_type: str, image: bytes) -> dict:
    """Takes one job, uploads its image, and posts a result that references it."""
    headers = {"Authorization": f"Bearer {ECHO_WORKER_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as http:
        reply = await http.post("/api/v1/worker/jobs", json={
            "worker_id": "test-worker", "job_types": [job_type], "wait_s": 15})
        assert reply.status_code == 200, reply.text
        (grant,) = reply.json()["jobs"]
        reply = await http.put(f"/api/v1/worker/jobs/{grant['job_id']}/files/image-0.png",
                               params={"lease_id": grant["lease_id"]}, content=image,
                               headers={"Content-Type": "image/png"})
        assert reply.status_code == 200, reply.text
        ref = reply.json()
        reply = await http.post(f"/api/v1/worker/jobs/{grant['job_id']}/result", json={
            "lease_id": grant["lease_id"], "outputs": {"image": ref, "text": "from a file"}})
        assert reply.status_code == 200, reply.text
        return ref


async def test_an_image_file_shows_from_its_url_on_an_open_endpoint(start_server, browser):
    server = start_server()
    page = await browser.open(server.url + "/echo")
    await page.locator("#input-text").fill("open")
    await page.get_by_role("button", name="Run").click()
    ref = await work_one_job(server.url, "echo", png(40, 30))
    await expect(page.locator(".job-status")).to_have_attribute("data-status", "done",
                                                               timeout=TIMEOUT_MS)
    image = page.locator('#outputs [data-output="image"] img')
    await expect(image).to_be_visible()
    await expect(image).to_have_js_property("naturalWidth", 40)
    assert await image.get_attribute("src") == ref["url"]
    link = page.locator('#outputs [data-output="image"] a[download]')
    await expect(link).to_have_attribute("download", re.compile(r"^echo-image\.png$"))
    await browser.screenshot(page, "file-open")


async def test_an_image_file_of_a_keyed_endpoint_shows_from_a_blob_url(
    start_server, browser, endpoints_dir
):
    echo_variant(endpoints_dir, "private", ENDPOINT={"title": "Private echo"},
                 CLIENTS={"auth_keys": [SECRET]})
    server = start_server()
    page = await browser.open(server.url + "/private")
    await page.evaluate(f"localStorage.setItem('jobhive.key.private', '{SECRET}')")
    await page.reload()
    await page.locator("#input-text").fill("keyed")
    await page.get_by_role("button", name="Run").click()
    await work_one_job(server.url, "echo", png(24, 16))  # (the copy keeps job type echo)
    await expect(page.locator(".job-status")).to_have_attribute("data-status", "done",
                                                               timeout=TIMEOUT_MS)
    image = page.locator('#outputs [data-output="image"] img')
    await expect(image).to_be_visible()
    await expect(image).to_have_js_property("naturalWidth", 24)
    assert (await image.get_attribute("src")).startswith("blob:")
    async with page.expect_download() as download:
        await page.locator('#outputs [data-output="image"] a[download]').click()
    assert (await download.value).suggested_filename == "private-image.png"
    await browser.screenshot(page, "file-keyed")


async def test_the_sd3_page_shows_image_files_with_their_download_links(start_server, browser):
    server = start_server()
    page = await browser.open(server.url + "/sd3")
    await expect(page.locator("main#sd3")).to_have_attribute("aria-busy", "false")
    await page.locator("#prompt").fill("a file")
    await page.locator("#seed").fill("7")
    await page.locator("#generate").click()
    headers = {"Authorization": "Bearer sd3-worker-key"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
        reply = await http.post("/api/v1/worker/jobs", json={
            "worker_id": "test-worker", "job_types": ["sd3"], "wait_s": 15})
        (grant,) = reply.json()["jobs"]
        reply = await http.put(f"/api/v1/worker/jobs/{grant['job_id']}/files/image-0.webp",
                               params={"lease_id": grant["lease_id"]}, content=png(32, 32),
                               headers={"Content-Type": "image/webp"})  # (not decoded)
        assert reply.status_code == 200, reply.text
        reply = await http.post(f"/api/v1/worker/jobs/{grant['job_id']}/result", json={
            "lease_id": grant["lease_id"], "outputs": {"images": [reply.json()], "seeds": [7]}})
        assert reply.status_code == 200, reply.text
    figure = page.locator("#gallery .result-image").first
    await expect(figure).to_be_visible(timeout=TIMEOUT_MS)
    image = figure.locator("img")
    await expect(image).to_have_js_property("naturalWidth", 32)  # (retried until it loads)
    await expect(figure.locator("a[download]")).to_have_attribute(
        "download", "sd3-7-a-file.webp")
    await expect(page.locator("#previews img.final")).to_have_count(1)
    await browser.screenshot(page, "file-sd3")
