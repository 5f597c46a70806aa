"""What every screen shares: access to the app, translation, a status line."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.properties import StringProperty
from kivy.uix.screenmanager import Screen

__all__ = ["FieldScreen"]


class FieldScreen(Screen):
    """Base of the app's screens.  ``prepare(**params)`` runs before the screen is shown."""

    message = StringProperty("")  # a one-line status or error shown on the screen
    show_nav = True  # whether the bottom navigation bar is visible on this screen

    @property
    def app(self) -> Any:
        return App.get_running_app()

    def t(self, key: str, **values: Any) -> str:
        return self.app.t(key, None, **values)

    def prepare(self, **params: Any) -> None:
        """Receive parameters (e.g. a household id) before being shown."""

    def refresh(self) -> None:
        """Re-read what the screen shows (after a sync or a language change)."""

    def on_pre_enter(self, *args: Any) -> None:
        self.refresh()

    def forget(self) -> None:
        """The app just locked (the store is closed): drop every record from widgets and memory.

        By default this replays the leave hooks, in which screens clear what
        they hold once they see the store closed.
        """
        self.dispatch("on_pre_leave")
        self.dispatch("on_leave")
