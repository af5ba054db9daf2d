"""Draw the demo corpus images (examples/corpus/images/) from simple shapes with Pillow.

Deterministic: no clock, fixed random seeds, fixed encoder settings, so running it again
with the same Pillow version rewrites byte-identical files.

    python examples/make_corpus_images.py            # writes examples/corpus/images/
    python examples/make_corpus_images.py --out DIR  # somewhere else
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = (320, 240)
OUT = Path(__file__).resolve().parent / "corpus" / "images"


def _vertical_gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    w, h = SIZE
    img = Image.new("RGB", SIZE)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / (h - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (w, y)], fill=colour)
    return img


def red_sneaker() -> Image.Image:
    """A red running sneaker, side view, on a light floor."""
    img = _vertical_gradient((236, 240, 244), (200, 206, 214))
    d = ImageDraw.Draw(img)
    d.ellipse([40, 178, 290, 200], fill=(170, 176, 184))  # shadow
    # white foam midsole and dark outsole
    d.rounded_rectangle([36, 150, 292, 178], radius=14, fill=(248, 248, 248), outline=(90, 90, 90))
    d.rounded_rectangle([40, 172, 288, 184], radius=6, fill=(60, 60, 60))
    # red upper: heel block plus a sloping toe box
    upper = [(44, 152), (48, 96), (70, 80), (120, 84), (150, 104), (220, 118), (272, 132)]
    upper += [(288, 150), (44, 152)]
    d.polygon(upper, fill=(214, 30, 40), outline=(120, 10, 20))
    d.ellipse([58, 84, 96, 104], fill=(60, 20, 24))  # collar opening
    # laces across the tongue
    for i in range(5):
        x = 128 + i * 18
        d.line([(x, 96 + i * 4), (x + 14, 112 + i * 4)], fill=(255, 255, 255), width=3)
    # white side swoosh and reflective heel tab
    d.arc([90, 108, 250, 170], start=200, end=330, fill=(255, 255, 255), width=5)
    d.rectangle([44, 112, 52, 146], fill=(230, 230, 210))
    return img


def green_tent_night() -> Image.Image:
    """A green dome tent on a hill under a starry night sky with a moon."""
    img = _vertical_gradient((8, 12, 40), (34, 44, 90))
    d = ImageDraw.Draw(img)
    rng = random.Random(1987)
    for _ in range(140):
        x, y = rng.randrange(SIZE[0]), rng.randrange(150)
        r = rng.choice((0, 0, 0, 1))
        shade = rng.randrange(170, 256)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(shade, shade, min(255, shade + 20)))
    d.ellipse([248, 22, 284, 58], fill=(246, 240, 200))  # moon
    d.ellipse([258, 18, 292, 52], fill=(10, 14, 44))  # crescent cut
    d.ellipse([-80, 170, 400, 330], fill=(20, 46, 28))  # hill
    tent = [(90, 196), (160, 118), (230, 196)]
    d.polygon(tent, fill=(40, 150, 70), outline=(14, 70, 30))
    d.polygon([(160, 118), (142, 196), (178, 196)], fill=(250, 200, 90))  # lit door
    d.line([(160, 118), (160, 104)], fill=(200, 200, 200), width=2)  # pole tip
    d.line([(90, 196), (72, 206)], fill=(180, 180, 180), width=1)  # guy lines
    d.line([(230, 196), (248, 206)], fill=(180, 180, 180), width=1)
    return img


def blue_backpack() -> Image.Image:
    """A blue hiking backpack with a roll top, side pocket and hip belt."""
    img = _vertical_gradient((250, 246, 236), (226, 220, 204))
    d = ImageDraw.Draw(img)
    d.ellipse([100, 214, 220, 230], fill=(200, 194, 180))  # shadow
    d.rounded_rectangle([104, 50, 216, 220], radius=26, fill=(28, 84, 196), outline=(10, 40, 110))
    d.rounded_rectangle([110, 30, 210, 62], radius=10, fill=(20, 64, 160))  # roll top
    d.rectangle([156, 24, 164, 70], fill=(40, 40, 40))  # buckle strap
    d.rounded_rectangle([122, 120, 198, 196], radius=12, fill=(44, 110, 220), outline=(10, 40, 110))
    d.line([(126, 136), (194, 136)], fill=(230, 230, 230), width=3)  # zip
    d.rounded_rectangle([84, 110, 106, 190], radius=8, fill=(22, 70, 170))  # side pockets
    d.rounded_rectangle([214, 110, 236, 190], radius=8, fill=(22, 70, 170))
    d.rectangle([70, 176, 250, 188], fill=(50, 50, 56))  # hip belt
    d.rectangle([152, 172, 168, 192], fill=(20, 20, 20))
    return img


def sourdough_loaf() -> Image.Image:
    """A round sourdough loaf with a scored crust on a wooden board."""
    img = _vertical_gradient((244, 232, 214), (222, 204, 178))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([30, 150, 290, 214], radius=12, fill=(170, 116, 66))  # board
    for y in (166, 182, 198):
        d.line([(40, y), (280, y)], fill=(150, 98, 52), width=1)
    d.ellipse([70, 70, 250, 186], fill=(150, 84, 34), outline=(96, 50, 18))  # crust
    d.ellipse([86, 78, 234, 170], fill=(176, 104, 46))
    # score marks: a pale "ear" along a curved slash and two side cuts
    d.arc([100, 84, 220, 170], start=200, end=340, fill=(236, 206, 150), width=6)
    d.line([(120, 130), (150, 112)], fill=(226, 190, 130), width=4)
    d.line([(170, 140), (200, 122)], fill=(226, 190, 130), width=4)
    rng = random.Random(250)
    for _ in range(60):  # flour dusting
        x, y = rng.randrange(92, 228), rng.randrange(86, 164)
        d.point((x, y), fill=(245, 238, 224))
    return img.filter(ImageFilter.SMOOTH)


def mountain_trail() -> Image.Image:
    """A trail winding through a green valley towards snowy mountains."""
    img = _vertical_gradient((120, 176, 230), (206, 230, 246))
    d = ImageDraw.Draw(img)
    d.polygon([(0, 150), (70, 60), (140, 150)], fill=(110, 116, 130))
    d.polygon([(90, 150), (190, 40), (300, 150)], fill=(96, 102, 118))
    d.polygon([(220, 150), (290, 80), (360, 150)], fill=(112, 118, 134))
    snow = (250, 250, 252)
    d.polygon([(190, 40), (166, 66), (178, 62), (190, 72), (204, 60), (214, 66)], fill=snow)
    d.polygon([(70, 60), (56, 78), (70, 74), (84, 78)], fill=snow)
    d.rectangle([0, 146, 320, 240], fill=(74, 140, 60))  # meadow
    trail = [(150, 150), (166, 150), (200, 176), (120, 206), (210, 240), (110, 240)]
    trail += [(86, 206), (170, 176)]
    d.polygon(trail, fill=(196, 170, 120))
    for x, y in ((40, 180), (60, 200), (264, 172), (290, 196), (250, 214)):  # pine trees
        d.polygon([(x, y - 36), (x - 14, y), (x + 14, y)], fill=(26, 86, 40))
        d.rectangle([x - 2, y, x + 2, y + 8], fill=(90, 60, 30))
    return img


# name -> (drawing function, Pillow save options)
IMAGES: dict[str, tuple[Callable[[], Image.Image], dict]] = {
    "red-sneaker.png": (red_sneaker, {"optimize": True}),
    "green-tent-night-sky.jpg": (green_tent_night, {"quality": 85}),
    "blue-backpack.webp": (blue_backpack, {"quality": 80, "method": 6}),
    "sourdough-loaf.jpg": (sourdough_loaf, {"quality": 85}),
    "mountain-trail.png": (mountain_trail, {"optimize": True}),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (draw, options) in IMAGES.items():
        path = args.out / name
        draw().save(path, **options)
        print(f"{path} {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
