"""PLACEHOLDER being replaced by the full household screen (work in progress this session)."""

from __future__ import annotations

from .base import FieldScreen

__all__ = ["HouseholdScreen"]


class HouseholdScreen(FieldScreen):
    pass
