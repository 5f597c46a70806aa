"""Finding a font that has Chinese glyphs (Kivy's bundled Roboto has none).

Looked for, in order: a configured path, the FIELDSYNC_CJK_FONT environment
variable, Android's Noto Sans CJK in /system/fonts, Debian's
fonts-wqy-microhei / fonts-wqy-zenhei / fonts-noto-cjk.  If none is there,
:class:`FontNotFound` says where it looked and how to install one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FontNotFound", "CANDIDATES", "find_cjk_font"]

CANDIDATES = (
    "/system/fonts/NotoSansCJK-Regular.ttc",
    "/system/fonts/NotoSansSC-Regular.otf",
    "/system/fonts/DroidSansFallback.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
)


class FontNotFound(RuntimeError):
    """No CJK font was found; the message lists the places looked at."""


def find_cjk_font(configured: str | None = None, candidates: tuple[str, ...] = CANDIDATES) -> Path:
    """The path of a CJK-capable font; raises :class:`FontNotFound` with a clear message."""
    tried: list[str] = []
    for source in (configured, os.environ.get("FIELDSYNC_CJK_FONT")):
        if source:
            path = Path(source)
            if path.is_file():
                return path
            tried.append(f"{source} (configured, not found)")
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
        tried.append(candidate)
    raise FontNotFound(
        "No font with Chinese characters was found. Looked at:\n  " + "\n  ".join(tried)
        + "\nOn Debian/Ubuntu: apt-get install fonts-wqy-microhei (or fonts-noto-cjk); "
        "or set FIELDSYNC_CJK_FONT=/path/to/font.ttc, or font_path in the app settings file."
    )
