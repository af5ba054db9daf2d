"""Real headless Firefox for the Firefox checks of the pages (tests/test_browser_firefox.py).

Debian's firefox-esr (installed by scripts/setup.sh) driven over WebDriver BiDi, the W3C protocol
Firefox speaks itself on `--remote-debugging-port` (given 0, Firefox picks the port and prints
it). Written by hand, in a few calls, because no well-kept Python driver reaches Debian's Firefox
offline: Playwright drives only its own patched Firefox builds (a download), and Selenium needs
geckodriver, which Debian does not package.

Every log entry at level error (console errors and uncaught exceptions) is collected, for the
tests to assert there are none.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0


class Firefox:
    """One headless Firefox window: navigate, evaluate, wait for a condition, and the errors
    its pages logged."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self._reader = asyncio.create_task(self._read())
        self._context = ""

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if data.get("id") in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "log.entryAdded" and data["params"].get("level") == "error":
                self.errors.append(f"{data['params'].get('type')}: {data['params'].get('text')}")

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Sends one BiDi command and returns its result; RuntimeError on an error answer."""
        call_id = next(self._ids)
        answer = self._pending[call_id] = asyncio.get_running_loop().create_future()
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(answer, CALL_TIMEOUT_S)
        if reply.get("type") == "error":
            raise RuntimeError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        return reply["result"]

    async def _start(self) -> None:
        await self.call("session.new", {"capabilities": {}})
        await self.call("session.subscribe", {"events": ["log.entryAdded"]})
        tree = await self.call("browsingContext.getTree", {})
        self._context = tree["contexts"][0]["context"]

    async def goto(self, url: str) -> None:
        await self.call("browsingContext.navigate",
                        {"context": self._context, "url": url, "wait": "complete"})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON."""
        result = await self.call("script.evaluate", {
            "expression": f"(async () => JSON.stringify(await ({expression})))()",
            "target": {"context": self._context}, "awaitPromise": True,
        })
        if result.get("type") == "exception":
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Evaluates the expression until its value, as JSON, is truthy; returns it. An element
        comes back as {} (falsy): test for one with `!!document.querySelector(...)`."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout_s} s: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("browsingContext.captureScreenshot", {"context": self._context})
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("session.end", {})
        self._reader.cancel()


@contextlib.asynccontextmanager
async def firefox() -> AsyncIterator[Firefox]:
    """A headless Firefox with a fresh profile, its BiDi socket on a loopback port it chose.

    `--remote-debugging-port 0` has Firefox bind port 0 itself; it prints the port it got on
    stderr (`WebDriver BiDi listening on ws://127.0.0.1:PORT`), which is read back here: no
    port is picked beforehand for another process to take first."""
    assert FIREFOX, "firefox-esr is not installed (scripts/setup.sh installs it)"
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            FIREFOX, "--headless", "--no-remote", "--profile", profile,
            "--remote-debugging-port", "0",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        stderr = _Stderr(process)
        try:
            url = await stderr.bidi_url()
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(f"{url}/session", max_msg_size=0)
                browser = Firefox(ws)
                try:
                    await browser._start()
                    yield browser
                finally:
                    await browser.close()
                    await ws.close()
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
            await stderr.close()


class _Stderr:
    """Reads Firefox's stderr to its end (a pipe nobody reads would fill and block Firefox),
    keeping its last lines for an error message, and finds the BiDi listening line in it."""

    _LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process.stderr is not None
        rest = b""  # in chunks, not readline(): a line over its 64 KiB limit would end the loop
        while chunk := await self._process.stderr.read(1 << 16):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                self._line(line)
            rest = rest[-(1 << 16):]
        self._line(rest)

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        self.tail.append(line)
        if not self._url.done() and (match := self._LISTENING.search(line)):
            self._url.set_result(match.group(1).rstrip("/"))

    async def bidi_url(self) -> str:
        """`ws://127.0.0.1:PORT`, once Firefox listens (it takes a few seconds to start)."""
        done, _ = await asyncio.wait({self._url, self._reader}, timeout=START_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._url.done():
            return self._url.result()
        said = "\n".join(self.tail)
        if self._reader in done:  # stderr closed: Firefox exited
            code = await self._process.wait()
            raise RuntimeError(f"firefox exited with {code} before listening:\n{said}")
        raise TimeoutError(f"firefox not listening within {START_TIMEOUT_S} s:\n{said}")

    async def close(self) -> None:
        """Once Firefox has exited: the reader has met the end of stderr."""
        with contextlib.suppress(TimeoutError):  # a child of Firefox may hold the pipe open
            await asyncio.wait_for(self._reader, 10)
        self._url.cancel()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
