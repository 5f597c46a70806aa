"""First run: the server address and enrollment code, then the PIN; creates and enrolls the store."""

from __future__ import annotations

from kivy.properties import BooleanProperty, StringProperty

from ..services.session import SetupError
from .base import FieldScreen

__all__ = ["SetupScreen", "MIN_PIN"]

MIN_PIN = 6


class SetupScreen(FieldScreen):
    show_nav = False
    step = StringProperty("server")  # "server" then "pin"
    busy = BooleanProperty(False)

    def on_kv_post(self, base_widget: object) -> None:
        # Only the current step is in the layout: a hidden step must not take touches.
        # Strong references: ids are weak proxies, and a removed box would be collected.
        self._boxes = {"server": self.ids.server_box.__self__, "pin": self.ids.pin_box.__self__}
        for box in self._boxes.values():
            box.parent.remove_widget(box)
        self.on_step(self, self.step)

    def on_step(self, _screen: object, step: str) -> None:
        if not hasattr(self, "_boxes"):
            return
        holder = self.ids.steps
        holder.clear_widgets()
        holder.add_widget(self._boxes[step])

    def prepare(self, **params: object) -> None:
        self.step = "server"
        self.message = ""
        if self.app.session.config.server_url and not self.ids.server.text:
            self.ids.server.text = self.app.session.config.server_url

    def _error(self, exc: SetupError) -> str:
        key = f"setup.error.{exc.code}"
        from ..i18n import keys

        if key in keys():
            return self.t(key, detail=exc.detail)
        return self.t("setup.error.other", detail=exc.code)

    def next_step(self) -> None:
        """Check the server address, then ask for the PIN."""
        url = self.ids.server.text.strip().rstrip("/")
        code = self.ids.code.text.strip()
        if not url:
            self.message = self.t("common.required", field=self.t("setup.server"))
            return
        if not code:
            self.message = self.t("common.required", field=self.t("setup.code"))
            return
        try:
            self.app.session.check_server(url)
        except SetupError as exc:
            self.message = self._error(exc)
            return
        self.message = ""
        self.step = "pin"

    def enroll(self) -> None:
        pin, again = self.ids.pin.text, self.ids.pin_again.text
        if len(pin) < MIN_PIN:
            self.message = self.t("setup.pin_short")
            return
        if pin != again:
            self.message = self.t("setup.pin_mismatch")
            return
        self.message = self.t("setup.enrolling")
        try:
            self.app.session.set_up(self.ids.server.text.strip().rstrip("/"), self.ids.code.text.strip(), pin)
        except SetupError as exc:
            self.step = "server"
            self.message = self._error(exc)
            return
        finally:
            self.ids.pin.text = self.ids.pin_again.text = ""
        self.message = ""
        self.app.unlocked()
        self.app.sync_now()
