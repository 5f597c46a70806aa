"""Settings: language, PIN change, auto-lock, lock now, server address, enrollment, version, store status.

Settings live in the app's settings file (``app.config_file``); the PIN
change and the server check run on a worker thread so the screen never
freezes (the PIN's key derivation is deliberately slow), and report back
on the UI thread.
"""

from __future__ import annotations

import math
import threading
from importlib import metadata
from typing import Any, Callable
from urllib.parse import urlsplit

from kivy.clock import mainthread
from kivy.properties import BooleanProperty, NumericProperty, ObjectProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button

import fieldsync
from fieldsync.sync import enrollment

from ..services.review import grid_names
from ..services.session import SetupError
from .base import FieldScreen
from .setup import MIN_PIN

__all__ = ["SettingsScreen", "SettingsRow", "ServerEditor", "ServerEditButton", "LOCK_CHOICES_S"]

LOCK_CHOICES_S = (60, 120, 300, 600)
# Kinds listed first in the store status, in the order a worker thinks of them.
_KIND_ORDER = ("households", "residents", "visits", "reports", "tasks", "grids", "conflicts")


class SettingsRow(BoxLayout):
    label = StringProperty("")
    value = StringProperty("")


class ServerEditButton(Button):
    screen = ObjectProperty(None, allownone=True)


class ServerEditor(BoxLayout):
    screen = ObjectProperty(None, allownone=True)


def _app_version() -> str:
    try:
        return metadata.version("fieldsync")
    except metadata.PackageNotFoundError:
        return fieldsync.__version__


class SettingsScreen(FieldScreen):
    # what the sections say (re-said in the new language after a switch)
    pin_message = StringProperty("")
    pin_ok = BooleanProperty(False)
    pin_busy = BooleanProperty(False)
    server_message = StringProperty("")
    server_ok = BooleanProperty(False)
    lock_message = StringProperty("")
    # server address
    server_url = StringProperty("")
    server_editing = BooleanProperty(False)
    server_editor = ObjectProperty(None, allownone=True)  # the open address editor
    server_busy = BooleanProperty(False)
    confirm_url = StringProperty("")  # checked and waiting for the worker's "yes"
    confirm_text = StringProperty("")
    # auto-lock
    lock_timeout_s = NumericProperty(300)
    # this tablet
    worker_id = StringProperty("")
    device_id = StringProperty("")
    grids_text = StringProperty("")
    version_text = StringProperty("")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._said: dict[str, tuple[str, dict[str, Any]]] = {}
        self._confirm: tuple[str, dict[str, Any]] | None = None
        self.job: threading.Thread | None = None  # the running PIN change or server check (tests join it)

    # -- messages that follow the language ------------------------------------------
    def _say(self, section: str, key: str | None, ok: bool = False, **values: Any) -> None:
        if key is None:
            self._said.pop(section, None)
        else:
            self._said[section] = (key, values)
        # A value given as a function is worked out now, in the current language.
        text = self.t(key, **{k: (v() if callable(v) else v) for k, v in values.items()}) if key else ""
        if section == "pin":
            self.pin_message, self.pin_ok = text, ok
        elif section == "server":
            self.server_message, self.server_ok = text, ok
        else:
            self.lock_message = text

    def prepare(self, **params: Any) -> None:
        for section in ("pin", "server", "lock"):
            self._say(section, None)
        self._clear_pins()
        self._show_server_editor(False)
        self.confirm_url = ""
        self._confirm = None
        self.confirm_text = ""

    def refresh(self) -> None:
        cfg = self.app.config_file
        self.server_url = cfg.server_url
        self.lock_timeout_s = cfg.lock_timeout_s
        if not self.ids.server_slot.children:
            self._show_server_editor(self.server_editing)
        for section, (key, values) in list(self._said.items()):
            self._say(section, key, self.pin_ok if section == "pin" else self.server_ok, **values)
        if self._confirm is not None:
            self.confirm_text = self.t(self._confirm[0], **self._confirm[1])
        self.version_text = self.t("settings.version_value", version=_app_version(), schema=fieldsync.SCHEMA_VERSION)
        store = self.app.session.store
        rows = self.ids.store_rows
        rows.clear_widgets()
        if store is None:
            self.worker_id = self.device_id = self.grids_text = ""
            return
        who = enrollment(store)
        self.worker_id = who.worker_id if who else self.t("settings.not_enrolled")
        self.device_id = who.device_id if who else "-"
        names = grid_names(store)
        self.grids_text = "\n".join(names.get(g, g) for g in store.grids()) or "-"
        status = store.status()
        kinds = [k for k in _KIND_ORDER if k in status.records]
        kinds += sorted(k for k in status.records if k not in _KIND_ORDER and status.records[k])
        for kind in kinds:
            key = f"settings.kind.{kind}"
            rows.add_widget(SettingsRow(label=self.t(key) if key in _catalog_keys() else kind,
                                        value=self.t("settings.records", n=status.records[kind])))
        rows.add_widget(SettingsRow(label=self.t("settings.pending"), value=self.t("settings.records", n=status.outbox)))
        rows.add_widget(SettingsRow(label=self.t("settings.attachments"),
                                    value=self.t("settings.files", n=status.attachments)))

    # -- language ------------------------------------------------------------------------
    def set_language(self, lang: str) -> None:
        if lang != self.app.lang:
            self.app.set_language(lang)

    # -- PIN -------------------------------------------------------------------------------
    def _clear_pins(self) -> None:
        for name in ("pin_old", "pin_new", "pin_again"):
            self.ids[name].text = ""

    def change_pin(self) -> None:
        """Check the form, then re-wrap the data key under the new PIN (off the UI thread)."""
        if self.pin_busy:
            return
        old, new, again = self.ids.pin_old.text, self.ids.pin_new.text, self.ids.pin_again.text
        problem = None
        if not old:
            problem = "settings.pin_old_missing"
        elif len(new) < MIN_PIN or not new.isdigit():
            problem = "settings.pin_short"
        elif new != again:
            problem = "settings.pin_mismatch"
        elif new == old:
            problem = "settings.pin_same"
        if problem:
            self._say("pin", problem)
            return
        self._clear_pins()
        self.pin_busy = True
        self._say("pin", "settings.pin_changing", ok=True)
        self._run(lambda: self.app.session.change_pin(old, new), self._pin_changed)

    def _pin_changed(self, error: BaseException | None) -> None:
        self.pin_busy = False
        if error is None:
            self._say("pin", "settings.pin_done", ok=True)
        elif isinstance(error, fieldsync.WrongPinError):
            if error.retry_after:
                self._say("pin", "settings.pin_wrong_wait", left=error.attempts_left,
                          seconds=math.ceil(error.retry_after))
            else:
                self._say("pin", "settings.pin_wrong", left=error.attempts_left)
        elif isinstance(error, fieldsync.PinLockedError):
            self._say("pin", "settings.pin_wait", seconds=math.ceil(error.retry_after))
        elif isinstance(error, fieldsync.StoreErasedError):
            app = self.app
            app.lock()
            app.screen.message = app.t("unlock.erased")
        else:
            self._say("pin", "settings.pin_failed", message=str(error))

    # -- auto-lock -------------------------------------------------------------------------
    def set_lock_timeout(self, seconds: int) -> None:
        cfg = self.app.config_file
        cfg.lock_timeout_s = int(seconds)
        cfg.save()
        self.lock_timeout_s = cfg.lock_timeout_s
        self._say("lock", "settings.lock_saved", ok=True, n=int(seconds) // 60)

    def lock_now(self) -> None:
        self.app.lock()

    # -- server address --------------------------------------------------------------------
    def _show_server_editor(self, editing: bool) -> None:
        """Swap the "change" button and the editor (added and removed, never hidden: hidden widgets eat taps)."""
        slot = self.ids.server_slot
        if slot.children and editing == self.server_editing:
            return
        slot.clear_widgets()
        self.server_editing = editing
        self.server_editor = ServerEditor(screen=self) if editing else None
        slot.add_widget(self.server_editor if editing else ServerEditButton(screen=self))

    def edit_server(self) -> None:
        self._cancel_confirm()
        self._show_server_editor(True)
        self.server_editor.ids.input.text = self.server_url
        self._say("server", None)

    def cancel_server(self) -> None:
        self._show_server_editor(False)
        self._say("server", None)
        self._cancel_confirm()

    def server_text_changed(self, text: str) -> None:
        """Typing after the check: the confirmation was for the old text, ask again."""
        if self.confirm_url and text.strip().rstrip("/") != self.confirm_url:
            self._cancel_confirm()

    def _cancel_confirm(self) -> None:
        self.confirm_url = ""
        self._confirm = None
        self.confirm_text = ""

    def check_server(self) -> None:
        """Check the new address answers as a district server, then ask the worker to confirm."""
        if self.server_editor is None:
            return
        url = self.server_editor.ids.input.text.strip().rstrip("/")
        self._cancel_confirm()
        if not url:
            self._say("server", "common.required", field=lambda: self.t("settings.server"))
            return
        if url == self.app.config_file.server_url:
            self._say("server", "settings.server_same")
            return
        self.server_busy = True
        self._say("server", "settings.server_checking", ok=True)
        self._run(lambda: self.app.session.check_server(url), lambda error: self._server_checked(url, error))

    def _server_checked(self, url: str, error: BaseException | None) -> None:
        self.server_busy = False
        if self.server_editor is None:  # cancelled while the check ran
            return
        if isinstance(error, SetupError) and error.code == "bad_url":
            if urlsplit(url).scheme == "http":  # refused: personal data travels over https only
                self._say("server", "settings.server_https")
            else:
                self._say("server", "settings.server_bad", detail=error.detail)
            return
        if isinstance(error, SetupError) and error.code == "not_a_server":
            self._say("server", "settings.server_not_district")
            return
        self._say("server", None)
        # Unreachable is no reason to refuse: the tablet may simply be offline right now.
        key = "settings.server_confirm" if error is None else "settings.server_confirm_offline"
        self._confirm = (key, {"url": url})
        self.confirm_url = url
        self.confirm_text = self.t(key, url=url)

    def confirm_server(self) -> None:
        """The worker said yes: save the address; the next sync uses it."""
        if not self.confirm_url:
            return
        cfg = self.app.config_file
        cfg.server_url = self.confirm_url
        cfg.save()
        self.server_url = cfg.server_url
        self._show_server_editor(False)
        self._cancel_confirm()
        self._say("server", "settings.server_saved", ok=True)

    # -- background work ---------------------------------------------------------------------
    def _run(self, work: Callable[[], Any], done: Callable[[BaseException | None], None]) -> None:
        @mainthread
        def report(error: BaseException | None) -> None:
            done(error)

        def target() -> None:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - every outcome is shown on the screen
                report(exc)
            else:
                report(None)

        self.job = threading.Thread(target=target, name="settings-work", daemon=True)
        self.job.start()


def _catalog_keys() -> set[str]:
    from ..i18n import keys

    return set(keys())
