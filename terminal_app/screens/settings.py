"""PLACEHOLDER being replaced by the full settings screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["SettingsScreen"]


class SettingsScreen(FieldScreen):
    pass
