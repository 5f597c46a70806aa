"""A small real JPEG for the report-loop and console tests (drawn with Pillow, no files needed)."""

from __future__ import annotations

import io


def jpeg(text_colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), (236, 239, 241))
    draw = ImageDraw.Draw(img)
    draw.rectangle((30, 40, 290, 200), outline=(80, 80, 80), width=4)
    for i in range(6):
        draw.rectangle((50 + i * 38, 70, 75 + i * 38, 170), fill=text_colour)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=80)
    return out.getvalue()
