"""Blocking work (Pillow, ffmpeg) must never run on the server's event loop.

The server runs with --dev: asyncio's debug mode logs any callback that holds the loop longer
than 0.1 s ("Executing <...> took 0.3 seconds"). Image checks heavy enough to take several
times that are submitted at once; the log must show no such line.
"""

import base64
import concurrent.futures
import io
import os

from PIL import Image


def noisy_png_data_url(width: int, height: int) -> str:
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image_validation_does_not_block_the_event_loop(start_server, http):
    server = start_server("--dev")
    image = noisy_png_data_url(3000, 2000)  # over echo's 2048 px: shrunk and re-encoded

    def submit() -> int:
        reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                          json={"inputs": {"image": image}})
        return reply.status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: submit(), range(4))) == [202] * 4
    assert http.get(f"{server.url}/health").status_code == 200
    server.stop()
    assert "Executing" not in server.text, server.text[-2000:]
    assert "took" not in server.text
