"""The pages in real headless Firefox (Debian's firefox-esr over WebDriver BiDi, tests/firefox.py),
against the real server with the repository's endpoints and a real `jobhive-worker noop`.

Chromium runs the full browser tests (test_browser_*.py); this checks that every page also loads
in Firefox without a console error or an uncaught exception, and that the shared client runs a
job there end to end (submit, follow by SSE, the result drawn).
"""

from __future__ import annotations

import json

from conftest import REPO
from firefox import firefox
from test_browser_pages import CHARTS_INKED

SCREENSHOTS = REPO / "artifacts" / "screenshots" / "firefox"
PAGES = ["/", "/echo", "/sd3", "/llama4_chat", "/rag_search", "/rag_chat", "/dashboard"]

# Fills the echo form as a user would (a second of work in 3 steps, each with a preview image)
# and submits it.
RUN_ECHO = """
  (async () => {
    const values = {text: 'hello from firefox', delay_s: '1', steps: '3'};
    for (const [name, value] of Object.entries(values)) {
      const control = document.getElementById(`input-${name}`);
      control.value = value;
      control.dispatchEvent(new Event('input', {bubbles: true}));
    }
    document.querySelector('form').requestSubmit();
  })()
"""


async def test_every_page_loads_in_firefox_and_runs_a_job(start_server, start_worker, tmp_path):
    server = start_server(endpoints=REPO / "endpoints")
    start_worker(server.url)
    async with firefox() as browser:
        for path in PAGES:
            await browser.goto(server.url + path)
            # Each page is marked busy (aria-busy) until its script has drawn it.
            await browser.wait_for("document.readyState === 'complete' && !document.querySelector("
                                   "'main[aria-busy=true], #endpoints[aria-busy=true]')")
            title = await browser.evaluate("document.querySelector('h1')?.textContent")
            assert title, f"{path}: no heading drawn"
            name = path.strip("/") or "index"
            await browser.screenshot(SCREENSHOTS / f"{name}.png")
            assert not browser.errors, f"{path}: {json.dumps(browser.errors, indent=1)}"

        await browser.goto(server.url + "/echo")
        await browser.wait_for("document.querySelector('[data-workers]')?.textContent"
                               ".includes('1 worker online')")
        await browser.evaluate(RUN_ECHO)
        await browser.wait_for("!!document.querySelector('.progress-outputs img.preview')")
        status = await browser.wait_for(
            "document.querySelector('.job-status')?.dataset.status === 'done' && "
            "document.querySelector('.job-status').dataset.transport")
        assert status == "sse"
        text = await browser.evaluate("document.querySelector('#outputs [data-output=\"text\"]')"
                                      "?.textContent")
        assert "hello from firefox" in text
        await browser.screenshot(SCREENSHOTS / "echo-done.png")
        assert not browser.errors, json.dumps(browser.errors, indent=1)

        # The dashboard draws its charts (uPlot) and the worker, polling fast (no job ends
        # while it watches, so the latency chart has axes but no line).
        await browser.goto(server.url + "/dashboard?every=0.3")
        await browser.wait_for("['jobs', 'queued', 'workers'].every((c) => Number(document"
                               ".querySelector(`figure[data-chart=${c}]`).dataset.points) > 1)")
        assert await browser.evaluate(f"({CHARTS_INKED})()")
        done = await browser.wait_for("document.querySelector('#endpoints-table "
                                      "tr[data-endpoint=\"echo\"] td:nth-child(8)')?.textContent")
        assert done == "1"  # the echo job above
        model = await browser.evaluate("document.querySelector('#workers-table tbody tr "
                                       "td:nth-child(3)')?.textContent")
        assert model == "noop"
        await browser.screenshot(tmp_path / "dashboard-firefox.png")
        assert (tmp_path / "dashboard-firefox.png").stat().st_size > 10_000
        assert not browser.errors, json.dumps(browser.errors, indent=1)
