"""The grid worker's app (Kivy): screens, the always-visible sync bar, auto-lock.

``GridWorkerApp(data_dir)`` is the whole app.  Everything it knows about
records, sync and PINs comes from ``terminal_app.services`` (no Kivy there)
and the public fieldsync API.  Sync runs on a worker thread; its results
come back through ``@mainthread`` so the UI never waits for the network.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, Callable

from kivy.app import App
from kivy.clock import Clock, mainthread
from kivy.core.text import DEFAULT_FONT, LabelBase
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.screenmanager import NoTransition, ScreenManager
from kivy.utils import platform

import fieldsync
from fieldsync.sync import SyncClient, SyncResult, SyncStatus, enrollment
from fieldsync.transport import Request, Transport

from .config import AppConfig
from .fonts import FontNotFound, find_cjk_font
from .i18n import load_catalog, tr
from .screens import NAV_SCREENS, load_screen
from .services.forms import Drafts
from .services.grid import GridModel
from .services.review import open_counts
from .services.session import Session
from .services.sync_worker import SyncWorker, network_is_metered, prefetch_missing_photos
from .widgets.syncbar import SyncBar

__all__ = ["GridWorkerApp"]

log = logging.getLogger("terminal_app")
_HERE = Path(__file__).parent


class GridWorkerApp(App):
    lang = StringProperty("zh")
    nav_visible = BooleanProperty(False)
    font_problem = StringProperty("")

    def __init__(self, data_dir: str | Path, *, transport_factory: Callable[[str], Transport] | None = None,
                 kdf: fieldsync.KdfParams | None = None, today: date | None = None,
                 sync_in_background: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_file = AppConfig.load(data_dir)
        self.lang = self.config_file.language
        self.session = Session(self.config_file, transport_factory, kdf)
        self.today = today
        self.sync_in_background = sync_in_background
        self.grid: GridModel | None = None
        self.drafts: Drafts | None = None
        self.worker: SyncWorker | None = None
        self.worker_id = ""
        self.grid_ids: list[str] = []
        self.status = SyncStatus()
        self.last_sync_error: Exception | None = None
        self.sync_results: list[SyncResult] = []
        self._last_touch = time.monotonic()

    # -- building ------------------------------------------------------------
    def build(self) -> BoxLayout:
        self.title = "fieldsync"
        load_catalog()
        try:
            LabelBase.register(DEFAULT_FONT, str(find_cjk_font(self.config_file.font_path or None)))
        except FontNotFound as exc:
            # Chinese cannot be drawn: say so plainly and carry on in English.
            log.error("%s", exc)
            self.font_problem = str(exc).splitlines()[0]
            self.lang = "en"
        style = str(_HERE / "widgets" / "style.kv")
        if style not in Builder.files:  # a second app in one process would apply its rules twice
            Builder.load_file(style)
        root = BoxLayout(orientation="vertical")
        self.syncbar = SyncBar()
        self.manager = ScreenManager(transition=NoTransition())
        for name in ("setup", "unlock", "overview"):  # the rest are built when first shown
            self.manager.add_widget(load_screen(name))
        self.navbar = Builder.load_string("NavBar:\n")
        for name in NAV_SCREENS:
            button = Button(font_size="18sp", background_normal="", background_color=(0.15, 0.17, 0.20, 1))
            button.screen_name = name
            button.bind(on_release=lambda b: self.go(b.screen_name))
            self.navbar.add_widget(button)
        root.add_widget(self.syncbar)
        root.add_widget(self.manager)
        self._label_nav()
        self.bind(lang=lambda *_: self._label_nav())
        Window.bind(on_touch_down=self._touched, on_key_down=self._touched)
        Clock.schedule_interval(self._check_idle, 5)
        return root

    def _label_nav(self) -> None:
        for button in self.navbar.children:
            button.text = self.t(f"nav.{button.screen_name}")
        self.syncbar.show(self.status)

    def on_start(self) -> None:
        _secure_window()
        self.go("unlock" if self.session.is_set_up else "setup")

    def on_stop(self) -> None:
        self.lock(show=False)

    # -- navigation and text -------------------------------------------------
    def t(self, key: str, lang: str | None = None, **values: Any) -> str:
        """Translate ``key``; in .kv pass ``app.lang`` as ``lang`` so the text follows language changes."""
        return tr(key, lang or self.lang, **values)

    def go(self, name: str, **params: Any) -> None:
        if not self.manager.has_screen(name):
            self.manager.add_widget(load_screen(name))
        screen = self.manager.get_screen(name)
        screen.prepare(**params)
        if self.manager.current == name:
            screen.refresh()
        self.manager.current = name
        self.nav_visible = screen.show_nav
        if screen.show_nav and self.navbar.parent is None:
            self.root.add_widget(self.navbar)
        elif not screen.show_nav and self.navbar.parent is not None:
            self.root.remove_widget(self.navbar)

    @property
    def screen(self) -> Any:
        return self.manager.current_screen

    def set_language(self, lang: str) -> None:
        self.lang = lang
        self.config_file.language = lang
        self.config_file.save()
        self.screen.refresh()

    # -- session --------------------------------------------------------------
    def unlocked(self) -> None:
        """The store is open (after set-up or PIN): start work."""
        store = self.session.require_store()
        who = enrollment(store)
        self.worker_id = who.worker_id if who else ""
        self.grid = GridModel(store, self.today)
        self.drafts = Drafts(store)
        self._last_touch = time.monotonic()
        self.status = SyncClient(store, self.session.transport()).status if who else SyncStatus()
        self.syncbar.show(self.status)
        gc.collect()
        gc.freeze()  # the app's long-lived objects leave the collector's view: no 100 ms pauses while typing
        if self.sync_in_background:
            self.start_sync_worker()
        self.go("overview", reset=True)

    def lock(self, show: bool = True) -> None:
        """Close the store.  The screen changes first, so the one being left saves its draft."""
        if show and self.session.is_set_up:
            self.go("unlock")
        elif self.manager.current_screen is not None:
            self.manager.current_screen.dispatch("on_pre_leave")
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.grid = None
        self.drafts = None
        self.session.lock()
        for screen in self.manager.screens:
            if screen is not self.manager.current_screen:
                screen.forget()

    def _touched(self, *args: Any) -> None:
        self._last_touch = time.monotonic()

    def _check_idle(self, dt: float) -> None:
        idle = time.monotonic() - self._last_touch
        if self.session.unlocked and idle > self.config_file.lock_timeout_s:
            log.info("locking after %.0f s without use", idle)
            self.lock()

    # -- sync -------------------------------------------------------------------
    def start_sync_worker(self) -> None:
        cfg = self.config_file
        self.worker = SyncWorker(self._client, self._probe, on_status=self._sync_status, on_done=self._sync_done,
                                 interval_s=cfg.sync_interval_s, probe_interval_s=cfg.probe_interval_s,
                                 prefetch=self._prefetch_photos)
        self.worker.start()

    def _prefetch_photos(self, client: SyncClient) -> None:
        """After a sync (worker thread): fetch missing report photos when settings.json has
        ``prefetch_photos_on_wifi`` and the network is not metered."""
        if self.config_file.prefetch_photos_on_wifi and not network_is_metered(platform):
            prefetch_missing_photos(client)

    def _client(self, on_status: Callable[[SyncStatus], None]) -> SyncClient | None:
        store = self.session.store
        if store is None:
            return None
        # Few quick retries: the worker tries again on its own schedule, and the bar shows "offline" at once.
        return SyncClient(store, self.session.transport(), page_limit=500, on_status=on_status,
                          retries=1, backoff_s=0.5, max_backoff_s=2)

    def _probe(self) -> bool:
        resp = self.session.transport().handle(Request("GET", "/v1/hello"))
        return resp.status == 200

    def sync_now(self) -> None:
        """The sync button: in the background when a worker runs, else right here (tests, demo)."""
        if self.worker is not None:
            self.worker.request()
            return
        client = self._client(self._sync_status)
        if client is None:
            return
        try:
            result = client.sync()
        except Exception as exc:  # noqa: BLE001 - shown in the sync bar
            self._finish_sync(None, exc)
        else:
            self._finish_sync(result, None)

    def saved(self) -> None:
        """A screen saved a record: show it as pending and let the worker sync soon."""
        if self.grid is not None:
            self.grid.invalidate()
        self._recount()
        if self.worker is not None:
            self.worker.changed()

    def _recount(self, **changes: Any) -> None:
        """Refresh the sync bar's counts (pending, rejections, open conflicts) from the store."""
        store = self.session.store
        if store is not None:
            rejections, conflicts = open_counts(store)
            self.status = replace(self.status, pending=store.outbox_size(), rejections=rejections,
                                  conflicts=conflicts, **changes)
        elif changes:
            self.status = replace(self.status, **changes)
        self.syncbar.show(self.status)

    def _running(self) -> bool:
        """False once this app has stopped: a sync worker's late status or result is then dropped."""
        return App.get_running_app() is self

    @mainthread
    def _sync_status(self, status: SyncStatus) -> None:
        if not self._running():
            return
        # Phase, progress and errors come from the sync; the counts stay the store's: a record saved
        # while the sync runs is not in the count the sync took when it started.
        self.status = replace(status, pending=self.status.pending, rejections=self.status.rejections,
                              conflicts=self.status.conflicts)
        if status.phase == "pushing":
            self._recount()  # the pending count falls as the server acknowledges each batch
        else:
            self.syncbar.show(self.status)

    @mainthread
    def _sync_done(self, result: SyncResult | None, error: Exception | None) -> None:
        if self._running():
            self._finish_sync(result, error)

    def _error_text(self, error: Exception) -> str:
        """What the sync bar says about a failed sync, in the app's language (the details are logged)."""
        if isinstance(error, fieldsync.NetworkError):
            return self.t("sync.error_network")
        if isinstance(error, fieldsync.ServerError):
            return self.t("sync.error_server")
        return str(error)

    def _finish_sync(self, result: SyncResult | None, error: Exception | None) -> None:
        self.last_sync_error = error
        if result is not None:
            self.sync_results.append(result)
        if isinstance(error, fieldsync.DeviceRevokedError):
            if error.wipe:
                self.session.store = None  # erased by the library after its final push
                self.lock(show=False)
                self.go("setup")
                self.screen.message = self.t("setup.wiped")
                return
        changes: dict[str, Any] = {
            "last_error": self._error_text(error) if error else None, "phase": "idle", "progress": None,
            "online": error is None or not isinstance(error, (fieldsync.NetworkError, fieldsync.ServerError)),
        }
        if result is not None and self.session.store is not None:
            changes["last_synced_ms"] = self.session.store.get_meta("last_synced_ms")
            if self.grid is not None and (result.pulled or result.removed or result.repaired):
                self.grid.invalidate()
        self._recount(**changes)
        self.screen.refresh()


def _secure_window() -> None:
    """Android: keep the app's screens out of the task switcher and screenshots (FLAG_SECURE)."""
    if platform != "android":
        return
    try:  # pragma: no cover - Android only
        from android.runnable import run_on_ui_thread  # type: ignore[import-not-found]
        from jnius import autoclass  # type: ignore[import-not-found]

        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        flag = autoclass("android.view.WindowManager$LayoutParams").FLAG_SECURE

        @run_on_ui_thread
        def apply() -> None:
            activity.getWindow().setFlags(flag, flag)

        apply()
    except Exception as exc:  # noqa: BLE001
        log.error("could not set FLAG_SECURE: %s", type(exc).__name__)
