"""The one message catalog of the app: Chinese first, English second.

Every visible string is looked up here by key.  The entries live in
``terminal_app/messages/*.py`` (one module per screen or area, each calling
:func:`register`), so screens can be worked on separately while there is
still one catalog and one lookup.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

__all__ = ["LANGUAGES", "register", "tr", "load_catalog", "keys"]

LANGUAGES = ("zh", "en")
_CATALOG: dict[str, tuple[str, str]] = {}
log = logging.getLogger("terminal_app.i18n")


def register(messages: dict[str, tuple[str, str]]) -> None:
    """Add entries ``key -> (中文, English)``; a key registered twice differently is an error."""
    for key, pair in messages.items():
        if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise ValueError(f"message {key!r} needs a Chinese and an English text")
        if key in _CATALOG and _CATALOG[key] != pair:
            raise ValueError(f"message {key!r} registered twice with different texts")
        _CATALOG[key] = pair


def load_catalog() -> None:
    """Import every module of ``terminal_app.messages`` (idempotent)."""
    from . import messages

    for info in pkgutil.iter_modules(messages.__path__):
        importlib.import_module(f"{messages.__name__}.{info.name}")


def tr(key: str, lang: str = "zh", **values: Any) -> str:
    """The text for ``key`` in ``lang``, with ``{name}`` placeholders filled from ``values``."""
    pair = _CATALOG.get(key)
    if pair is None:
        log.warning("missing message %s", key)
        return key
    text = pair[1 if lang == "en" else 0]
    return text.format(**values) if values else text


def keys() -> list[str]:
    return sorted(_CATALOG)
