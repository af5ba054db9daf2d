"""Blocking work (Pillow, ffmpeg) must never run on the server's event loop.

The server runs with --dev: asyncio's debug mode logs any callback that holds the loop longer
than 0.1 s ("Executing <...> took 0.3 seconds"). Image checks that take longer than that are
submitted at once; the log must show no such line.
"""

import base64
import concurrent.futures
import io

from PIL import Image


def gradient_png_data_url(width: int, height: int) -> str:
    """A smooth picture: a small upload (0.2 MB) that still takes Pillow ~0.15 s to decode,
    shrink and re-encode, so the check would stand out if it ran on the loop."""
    flat = Image.linear_gradient("L").resize((width, height))
    round_ = Image.radial_gradient("L").resize((width, height))
    image = Image.merge("RGB", (flat, round_, flat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image_validation_does_not_block_the_event_loop(start_server, http):
    server = start_server("--dev")
    image = gradient_png_data_url(3000, 2000)  # over echo's 2048 px: shrunk and re-encoded

    def submit() -> int:
        reply = http.post(f"{server.url}/api/v1/endpoints/echo/jobs",
                          json={"inputs": {"image": image}})
        return reply.status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: submit(), range(4))) == [202] * 4
    assert http.get(f"{server.url}/health").status_code == 200
    server.stop()
    # (asyncio's own shutdown of its thread pool, after the test, may be slow on a busy machine)
    slow = [line for line in server.text.splitlines()
            if "Executing" in line and "shutdown_default_executor" not in line]
    assert not slow, server.text[-2000:]
    assert "took" not in server.text
