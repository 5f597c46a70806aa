"""PLACEHOLDER being replaced by the full report screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["ReportScreen"]


class ReportScreen(FieldScreen):
    pass
