"""PLACEHOLDER being replaced by the full inbox screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["InboxScreen"]


class InboxScreen(FieldScreen):
    pass
