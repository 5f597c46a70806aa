"""The screen registry: name -> "module:Class".  Each screen is one .py and one .kv beside it.

To add a screen, write ``screens/<name>.py`` (a subclass of
:class:`terminal_app.screens.base.FieldScreen`) and ``screens/<name>.kv``
(layout only), then add a line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__all__ = ["SCREENS", "NAV_SCREENS", "load_screen"]

SCREENS: dict[str, str] = {
    "setup": "terminal_app.screens.setup:SetupScreen",
    "unlock": "terminal_app.screens.unlock:UnlockScreen",
    "overview": "terminal_app.screens.overview:OverviewScreen",
    "household": "terminal_app.screens.household:HouseholdScreen",
    "visit": "terminal_app.screens.visit:VisitScreen",
    "report": "terminal_app.screens.report:ReportScreen",
    "inbox": "terminal_app.screens.inbox:InboxScreen",
    "review": "terminal_app.screens.review:ReviewScreen",
    "settings": "terminal_app.screens.settings:SettingsScreen",
}

# Screens reached from the bottom navigation bar (the others are reached from these).
NAV_SCREENS = ("overview", "inbox", "report", "review", "settings")


def load_screen(name: str) -> Any:
    """Load the screen's .kv rules and return an instance named ``name``."""
    from kivy.lang import Builder

    module_name, class_name = SCREENS[name].split(":")
    module = importlib.import_module(module_name)
    kv = Path(module.__file__ or "").with_suffix(".kv")
    if kv.is_file() and str(kv) not in Builder.files:
        Builder.load_file(str(kv))
    return getattr(module, class_name)(name=name)
