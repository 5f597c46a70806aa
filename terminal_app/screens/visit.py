"""PLACEHOLDER being replaced by the full visit screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["VisitScreen"]


class VisitScreen(FieldScreen):
    pass
