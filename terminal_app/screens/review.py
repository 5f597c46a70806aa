"""PLACEHOLDER being replaced by the full review screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["ReviewScreen"]


class ReviewScreen(FieldScreen):
    pass
