"""End to end in real headless Chromium: the index page and the generic demo page, against a
real server and real `jobhive-worker noop` processes.

Each test fails on any console error or uncaught exception of its pages (the `browser` fixture,
tests/browser.py) unless it allowed that error first; screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re

import httpx
from e2e_http import echo_variant
from PIL import Image
from playwright.async_api import Page, expect

TIMEOUT_MS = 15_000
SECRET = "browser-secret-key"


async def submit_over_http(url: str, endpoint: str, inputs: dict) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(
            f"{url}/api/v1/endpoints/{endpoint}/jobs", json={"inputs": inputs}
        )
    assert reply.status_code == 202, reply.text
    return reply.json()


async def job_over_http(url: str, job_id: str) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{url}/api/v1/jobs/{job_id}")).json()


async def fill_echo(page: Page, text: str, steps: int | str = 0, delay_s: float = 0) -> None:
    await page.locator("#input-text").fill(text)
    await page.locator("#input-steps").fill(str(steps))
    await page.locator("#input-delay_s").fill(str(delay_s))


def status(page: Page):
    return page.locator(".job-status")


async def test_index_lists_every_endpoint_with_queue_and_workers(
    start_server, start_worker, browser, endpoints_dir
):
    # An endpoint no worker serves, with a job waiting in its queue.
    echo_variant(
        endpoints_dir,
        "waiting",
        ENDPOINT={"title": "Nobody serves this"},
        WORKER={"job_type": "nobody"},
    )
    server = start_server()
    start_worker(server.url)
    await submit_over_http(server.url, "waiting", {"text": "one"})
    async with httpx.AsyncClient() as client:
        listing = (await client.get(f"{server.url}/api/v1/endpoints")).json()["endpoints"]

    page = await browser.open(server.url + "/")
    cards = page.locator("li.card")
    await expect(cards).to_have_count(len(listing))  # every endpoint the server loaded
    for endpoint in listing:
        card = page.locator(f'li.card[data-endpoint="{endpoint["name"]}"]')
        await expect(card.locator("h2 a")).to_have_text(endpoint["title"])
        await expect(card.locator("h2 a")).to_have_attribute("href", endpoint["route"])
    echo = page.locator('li.card[data-endpoint="echo"]')
    await expect(echo).to_contain_text("Sends back what it was given")
    await expect(echo.locator('[data-stat="workers"]')).to_have_text("1 worker online")
    waiting = page.locator('li.card[data-endpoint="waiting"]')
    await expect(waiting.locator('[data-stat="workers"]')).to_have_text("no worker online")
    await expect(waiting.locator('[data-stat="queued"]')).to_have_text("1 queued")
    await browser.screenshot(page, "index")

    # It refreshes by itself.
    await submit_over_http(server.url, "waiting", {"text": "two"})
    await expect(waiting.locator('[data-stat="queued"]')).to_have_text(
        "2 queued", timeout=TIMEOUT_MS
    )

    await echo.locator("h2 a").click()
    await expect(page).to_have_url(server.url + "/echo")
    await expect(page.locator("h1")).to_have_text("Echo")


async def test_pages_show_their_model_and_warn_of_random_weights(start_server, start_worker,
                                                                 browser):
    server = start_server()
    # The echo page, opened before its worker connects: no model yet.
    echo = await browser.open(server.url + "/echo")
    await expect(echo.locator("[data-workers]")).to_have_attribute("data-workers", "0")
    await expect(echo.locator(".model-note")).to_be_hidden()
    start_worker(server.url)  # noop: no weights, none random
    # A worker with random weights, as the demo's tiny models report them (the real tiny
    # workers: test_browser_chat.py and test_browser_rag.py).
    tiny = {"name": "tiny-sd3", "dtype": "float32", "device": "cpu", "random": True}
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{server.url}/api/v1/worker/jobs",
            json={"worker_id": "tiny", "job_types": ["echo"], "wait_s": 0,
                  "info": {"loaded_models": [tiny]}},
            headers={"Authorization": "Bearer echo-worker-key"},
        )
        assert reply.status_code == 204, reply.text
        listing = (await client.get(f"{server.url}/api/v1/endpoints")).json()["endpoints"]
    models = {e["name"]: e["models"] for e in listing}
    assert models["echo"] == [
        {"name": "noop", "dtype": None, "device": "cpu", "random": False, "workers": 1},
        {**tiny, "workers": 1},
    ]
    assert models["sd3"] == []

    # The index: each card its models, a badge where one is random, the warning above them.
    index = await browser.open(server.url + "/")
    card = index.locator('li.card[data-endpoint="echo"]')
    await expect(card.locator(".model-line")).to_contain_text("Model: noop · cpu; tiny-sd3")
    await expect(card.locator("[data-random-weights]")).to_be_visible()
    await expect(index.locator('li.card[data-endpoint="sd3"] .model-line')).to_be_hidden()
    await expect(index.locator("#random-weights")).to_contain_text("tiny-sd3 has random")
    await browser.screenshot(index, "index-random-weights")

    # rag_chat's card leads to its chat: the Chat tab of the search page.
    await index.locator('li.card[data-endpoint="rag_chat"] h2 a').click()
    await expect(index).to_have_url(f"{server.url}/rag_search#chat")
    await expect(index.locator("#tab-chat")).to_have_attribute("aria-selected", "true")
    await expect(index.locator("#panel-chat")).to_be_visible()
    await expect(index.locator("#panel-search")).to_be_hidden()

    # Meanwhile the echo page has seen both (it checks every 5 s): under its title, with a
    # warning that names the random one.
    line = echo.locator("h1 ~ .model-note .model-line")  # near the title
    await expect(line).to_have_text("Model: noop · cpu; tiny-sd3 (random weights) · float32 · cpu",
                                    timeout=TIMEOUT_MS)
    warning = echo.locator("[data-random-weights]")
    await expect(warning).to_contain_text("tiny-sd3 has random weights (the demo's tiny model)")
    await expect(warning).to_contain_text("Start a worker with real weights for real answers")
    await browser.screenshot(echo, "echo-random-weights")


async def test_echo_page_submits_shows_progress_and_the_result(start_server, start_worker, browser):
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/echo")
    await expect(page.locator("[data-workers]")).to_contain_text("1 worker online")
    await fill_echo(page, "hello from the browser", steps=4, delay_s=2)
    await page.get_by_role("button", name="Run").click()

    await expect(status(page)).to_have_attribute("data-status", "running")
    await expect(status(page)).to_have_attribute("data-transport", "sse")
    await expect(status(page)).to_contain_text(re.compile(r"Running: \d+%"))
    preview = page.locator(".progress-outputs img.preview")
    await expect(preview).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    await browser.screenshot(page, "running")

    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(status(page)).to_contain_text(re.compile(r"Done in \d"))
    outputs = page.locator("#outputs")
    await expect(outputs.locator('[data-output="text"]')).to_contain_text("hello from the browser")
    await expect(outputs.locator('[data-output="steps"]')).to_contain_text("4")
    await expect(outputs.locator('[data-output="worker_id"]')).not_to_be_empty()
    await expect(page.get_by_role("button", name="Run")).to_be_enabled()
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    await browser.screenshot(page, "done")


async def test_an_image_goes_up_and_comes_back_with_a_download_link(
    start_server, start_worker, browser, tmp_path
):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(path)
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/echo")
    await page.locator("#input-image").set_input_files(str(path))
    await expect(page.locator('[data-field="image"] .file-previews img')).to_be_visible()
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    image = page.locator('#outputs [data-output="image"] img')
    await expect(image).to_be_visible()
    assert await image.evaluate("img => img.naturalWidth") == 40
    link = page.locator('#outputs [data-output="image"] a[download]')
    await expect(link).to_have_attribute("download", re.compile(r"^echo-image\.png$"))
    async with page.expect_download() as download:
        await link.click()
    assert (await download.value).suggested_filename == "echo-image.png"
    await browser.screenshot(page, "image")


async def test_queue_position_shows_while_waiting_for_a_worker(start_server, start_worker, browser):
    server = start_server()
    await submit_over_http(server.url, "echo", {"text": "ahead of the page's job"})
    page = await browser.open(server.url + "/echo")
    await expect(page.locator("[data-workers]")).to_contain_text("No worker is online")
    await fill_echo(page, "queued")
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_have_attribute("data-status", "queued")
    await expect(status(page)).to_contain_text("Queued: 1 job ahead")
    await browser.screenshot(page, "queued")

    await asyncio.to_thread(start_worker, server.url)
    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(page.locator('#outputs [data-output="text"]')).to_contain_text("queued")


async def test_a_bad_value_gets_the_servers_message_next_to_its_field(
    start_server, start_worker, browser
):
    server = start_server()
    start_worker(server.url)
    browser.allow(r"status of 400")  # the refused submit: Chromium logs every 4xx of fetch()
    page = await browser.open(server.url + "/echo")
    steps = page.locator("#input-steps")
    await expect(steps).to_have_attribute("max", "100")
    await fill_echo(page, "too many steps", steps=1000)  # the form leaves checking to the server
    await page.get_by_role("button", name="Run").click()

    error = page.locator('[data-field="steps"] .field-error')
    await expect(error).to_have_text("must be between 0 and 100 (got 1000)")
    await expect(steps).to_have_attribute("aria-invalid", "true")
    await expect(steps).to_have_attribute("aria-describedby", re.compile(r"\berror-steps\b"))
    await expect(page.locator(".error-banner")).to_contain_text(
        "invalid inputs for endpoint 'echo'"
    )
    await expect(page.locator(".field-error")).to_have_count(1)  # the other fields are fine
    await browser.screenshot(page, "field-error")

    await steps.fill("2")
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(page.locator(".field-error")).to_have_count(0)
    await expect(steps).not_to_have_attribute("aria-invalid", "true")
    await expect(page.locator(".error-banner")).to_be_hidden()


async def test_a_failed_job_shows_its_error(start_server, start_worker, browser):
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/echo")
    await page.locator("#input-fail").fill("the worker gave up")
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_have_attribute("data-status", "failed", timeout=TIMEOUT_MS)
    await expect(page.locator(".error-banner")).to_have_text("the worker gave up")
    await expect(status(page)).to_contain_text("Failed: the worker gave up")


async def test_cancel_stops_a_running_job(start_server, start_worker, browser):
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/echo")
    await fill_echo(page, "long", steps=30, delay_s=30)
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_contain_text(re.compile(r"Running: \d+%"))
    await page.get_by_role("button", name="Cancel").click()
    await expect(status(page)).to_have_attribute("data-status", "canceled")
    await expect(status(page)).to_have_text("Canceled")
    await expect(page.get_by_role("button", name="Run")).to_be_enabled()
    await browser.screenshot(page, "canceled")
    job_id = await status(page).get_attribute("data-job-id")
    assert (await job_over_http(server.url, job_id))["status"] == "canceled"


async def test_the_client_key_is_asked_for_once_and_kept(
    start_server, start_worker, browser, endpoints_dir
):
    echo_variant(
        endpoints_dir,
        "private",
        ENDPOINT={"title": "Private echo"},
        CLIENTS={"auth_keys": [SECRET]},
    )
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/private")
    dialog = page.locator("dialog.jobhive-key-dialog")
    await expect(page.locator("[data-key-note]")).to_contain_text("you will be asked for it once")

    # The first job asks for the key (before any request the server would refuse).
    await fill_echo(page, "first")
    await page.get_by_role("button", name="Run").click()
    await expect(dialog).to_be_visible()
    await browser.screenshot(page, "key-dialog")
    await dialog.locator("input").fill(SECRET)
    await dialog.get_by_role("button", name="Use key").click()
    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(page.locator('#outputs [data-output="text"]')).to_contain_text("first")
    await expect(page.locator("[data-key-note]")).to_contain_text("kept in this browser")

    # The next jobs, even after a reload, do not ask again.
    for text in ("second", "after a reload"):
        if text == "after a reload":
            await page.reload()
        await fill_echo(page, text)
        await page.get_by_role("button", name="Run").click()
        await expect(page.locator('#outputs [data-output="text"]')).to_contain_text(text)
        await expect(dialog).to_have_count(0)
    assert await page.evaluate("localStorage.getItem('jobhive.key.private')") == SECRET

    # A wrong key is refused and asked for again; giving up shows the server's answer.
    browser.allow(r"status of 401")
    await page.get_by_role("button", name="Forget key").click()
    await fill_echo(page, "wrong key")
    await page.get_by_role("button", name="Run").click()
    await dialog.locator("input").fill("not-the-key")
    await dialog.get_by_role("button", name="Use key").click()
    await expect(dialog).to_contain_text("refused this key")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(page.locator(".error-banner")).to_contain_text("missing or wrong client key")
    assert await page.evaluate("localStorage.getItem('jobhive.key.private')") is None


async def test_follow_falls_back_to_polling_when_events_are_blocked(
    start_server, start_worker, browser
):
    server = start_server()
    start_worker(server.url)
    browser.allow(r"net::ERR_FAILED")  # the blocked event stream
    page = await browser.open(server.url + "/echo")
    await page.route("**/api/v1/jobs/*/events", lambda route: route.abort())
    await fill_echo(page, "polled", steps=3, delay_s=1.5)
    await page.get_by_role("button", name="Run").click()
    await expect(status(page)).to_have_attribute("data-transport", "poll")
    await expect(page.locator(".progress-outputs img.preview")).to_be_visible()
    await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
    await expect(page.locator('#outputs [data-output="text"]')).to_contain_text("polled")


async def test_every_endpoint_gets_a_generic_page_that_fits_a_phone(start_server, browser):
    server = start_server()
    async with httpx.AsyncClient() as client:
        listing = (await client.get(f"{server.url}/api/v1/endpoints")).json()["endpoints"]
        schemas = [
            (await client.get(f"{server.url}/api/v1/endpoints/{e['name']}")).json() for e in listing
        ]
    page = await browser.open(server.url + "/", phone=True)
    await expect(page.locator("li.card")).to_have_count(len(listing))
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await browser.screenshot(page, "index-phone")
    for schema in schemas:
        await page.goto(f"{server.url}/static/endpoint.html?endpoint={schema['name']}")
        await expect(page.locator("h1")).to_have_text(schema["title"])
        fields = page.locator("form.job-form [data-field]")
        await expect(fields).to_have_count(len(schema["inputs"]))
        for name, spec in schema["inputs"].items():
            field = page.locator(f'[data-field="{name}"]')
            await expect(field).to_have_attribute("data-type", spec["type"])
            if spec["type"] in ("integer", "float") and "default" in spec:
                assert float(await field.locator("input").input_value()) == spec["default"]
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375, schema["name"]
        await browser.screenshot(page, f"{schema['name']}-phone")


async def test_a_chat_input_keeps_the_conversation(
    start_server, start_worker, browser, endpoints_dir
):
    # The echo endpoint plus a chat: the noop worker's reply is the `text` input, echoed.
    path = echo_variant(endpoints_dir, "chatecho", ENDPOINT={"title": "Chat echo"})
    path.write_text(path.read_text() + '\n[INPUTS.chat]\ntype = "chat_context"\nrequired = false\n')
    server = start_server()
    start_worker(server.url)
    page = await browser.open(server.url + "/chatecho")
    chat = page.locator('[data-field="chat"]')
    await chat.locator("summary").click()
    await chat.locator("details textarea").fill("be brief")

    for turn in (1, 2):
        await page.locator("#input-text").fill(f"pong {turn}")
        await page.locator("#input-chat").fill(f"ping {turn}")
        async with page.expect_request("**/api/v1/endpoints/chatecho/jobs") as request:
            await page.get_by_role("button", name="Run").click()
        sent = (await request.value).post_data_json["inputs"]["chat"]
        await expect(status(page)).to_have_attribute("data-status", "done", timeout=TIMEOUT_MS)
        await expect(page.locator("#input-chat")).to_have_value("")
    assert sent == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ping 1"},
        {"role": "assistant", "content": "pong 1"},
        {"role": "user", "content": "ping 2"},
    ]
    bubbles = chat.locator(".message")
    await expect(bubbles).to_have_count(5)
    await expect(bubbles.last).to_contain_text("pong 2")
    await browser.screenshot(page, "chat")

    await chat.get_by_role("button", name="Clear chat").click()
    await expect(bubbles).to_have_count(0)


# Whether every chart's canvas has something drawn on it (lines, axes: any pixel not clear).
CHARTS_INKED = """() => [...document.querySelectorAll('figure.chart')].every((figure) => {
  const canvas = figure.querySelector('canvas');
  if (!canvas || !canvas.width) return false;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) return true;
  return false;
})"""


async def test_the_dashboard_charts_jobs_latency_and_workers_live(
    start_server, start_worker, browser, tmp_path
):
    server = start_server()
    start_worker(server.url, "--worker-id", "dash-worker")
    page = await browser.open(server.url + "/")
    link = page.get_by_role("link", name="Dashboard", exact=True)  # (the index links to it)
    await expect(link).to_have_attribute("href", "/dashboard")
    await page.goto(server.url + "/dashboard?every=0.3")  # (polls faster than the default 2 s)
    await expect(page.locator("main")).not_to_have_attribute("aria-busy", "true")

    # Jobs finish while the page watches: its rates and quantiles come from what changed.
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(8):
            reply = await client.post(f"{server.url}/api/v1/endpoints/echo/jobs?wait=5",
                                      json={"inputs": {"text": str(i)}})
            assert reply.json()["status"] == "done"
            await asyncio.sleep(0.08)
    echo = page.locator('#endpoints-table tr[data-endpoint="echo"]')
    await expect(echo.locator("td").nth(6)).to_have_text("8", timeout=TIMEOUT_MS)  # done
    await expect(echo.locator("td").nth(2)).to_have_text("1")  # workers online
    for chart in ("jobs", "queued", "latency", "workers"):
        figure = page.locator(f'figure[data-chart="{chart}"]')
        await expect(figure).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
        await expect(figure.locator(".u-legend")).to_contain_text("echo")
    await expect(echo.locator("td").nth(4)).not_to_have_text("–")  # a p50 over the last jobs
    assert await page.evaluate(CHARTS_INKED)
    worker = page.locator('#workers-table tr[data-worker="dash-worker"]')
    await expect(worker).to_contain_text("echo")
    await expect(worker.locator("td").nth(1)).to_have_text("noop")  # its model
    await expect(worker.locator("td").nth(3)).to_have_text("8")  # its jobs done
    await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
