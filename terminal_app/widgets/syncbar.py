"""The sync bar, always visible: online or offline, pending changes, last sync, progress, errors."""

from __future__ import annotations

import time
from typing import Any

from kivy.app import App
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

from fieldsync.sync import SyncStatus

__all__ = ["SyncBar", "describe", "upload_percent"]


def _ago(app: Any, ms: int | None) -> str:
    if not ms:
        return app.t("sync.never")
    minutes = int((time.time() * 1000 - ms) // 60000)
    if minutes < 1:
        when = app.t("sync.just_now")
    elif minutes < 60:
        when = app.t("sync.minutes_ago", n=minutes)
    else:
        when = app.t("sync.hours_ago", n=minutes // 60)
    return app.t("sync.last", when=when)


def describe(app: Any, status: SyncStatus) -> tuple[str, str]:
    """(main line, detail line) for a status, in the app's language."""
    progress = status.progress
    if status.phase in ("pushing", "pulling") and progress is not None:
        main = app.t(f"sync.{status.phase}", n=progress.records)
    elif status.phase == "repairing":
        main = app.t("sync.repairing")
    elif status.phase == "uploading":
        main = app.t("sync.uploading", percent=upload_percent(status))
    else:
        main = app.t("sync.online" if status.online else "sync.offline")
    parts = [app.t("sync.pending", n=status.pending), _ago(app, status.last_synced_ms)]
    if status.photos_pending:
        parts.insert(1, app.t("sync.photos_pending", n=status.photos_pending))
    if status.rejections:
        parts.append(app.t("sync.rejections", n=status.rejections))
    if status.conflicts:
        parts.append(app.t("sync.conflicts", n=status.conflicts))
    if status.upload_error and status.phase == "idle":
        parts.append(app.t("sync.upload_error"))  # the records went: a photo failing is not a failed sync
    detail = " · ".join(parts)
    if status.last_error and status.phase == "idle" and not status.online:
        detail = app.t("sync.error", message=status.last_error[:60]) + " · " + parts[0]
    return main, detail


def upload_percent(status: SyncStatus) -> int:
    """How far the photo upload is, 0..100 (rounded down: 100 only when done)."""
    fraction = status.progress.fraction if status.progress is not None else None
    return int((fraction or 0.0) * 100)


class SyncBar(BoxLayout):
    main_text = StringProperty("")
    detail_text = StringProperty("")
    online = BooleanProperty(False)
    busy = BooleanProperty(False)
    progress = NumericProperty(0)  # records moved in the current sync (uploading photos: percent)

    def show(self, status: SyncStatus) -> None:
        app = App.get_running_app()
        if app is None:  # a late status from a sync worker whose app has stopped
            return
        self.main_text, self.detail_text = describe(app, status)
        self.online = status.online
        self.busy = status.phase != "idle"
        if status.phase == "uploading":
            self.progress = upload_percent(status)
        else:
            self.progress = status.progress.records if status.progress else 0
