"""What the sync bar counts while a sync runs, and what a sync that ends after the app stopped does.

The real app runs offscreen (SDL2's offscreen driver; KIVY_GL_BACKEND is never mocked).  The
statuses are delivered the way the sync worker delivers them: through the app's callbacks, on
the Kivy clock.  Found by test_field_day, which failed once in ~10 full runs: a status from a
sync that had started before a visit was saved replaced the bar's pending count with the
sync's older one (0 instead of 1), and a sync that finished while the app was stopping
refreshed a screen of an app that no longer ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from terminal_app.driver import offscreen

offscreen(quiet=True)  # before Kivy is imported anywhere in this process

from fieldsync import KdfParams, NetworkError, ServerError, Store  # noqa: E402
from fieldsync.sync import SyncStatus  # noqa: E402
from terminal_app.app import GridWorkerApp  # noqa: E402
from terminal_app.driver import AppDriver  # noqa: E402

PIN = "482916"
KDF = KdfParams(n=2**10)
GRID = "wc-lds-hys-01"


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[AppDriver]:
    data = tmp_path / "tablet"
    data.mkdir()
    Store.create(data / "tablet.fsdb", PIN, kdf=KDF).close()
    app = GridWorkerApp(data, kdf=KDF, sync_in_background=False)
    d = AppDriver(app)
    d.type(app.screen.ids.pin, PIN)
    d.tap(app.t("unlock.button"))
    d.wait_until(lambda: app.manager.current == "overview", what="the overview after unlocking")
    try:
        yield d
    finally:
        d.close()


def _save_household(d: AppDriver, n: int) -> None:
    d.app.session.store.put("households", {"grid_id": GRID, "address": f"花园山{n}栋1单元101", "head_name": "欧阳建国",
                                           "phone": f"1390713000{n}", "members": 1})
    d.app.saved()


def test_a_sync_status_keeps_the_count_of_records_saved_after_the_sync_began(driver: AppDriver) -> None:
    app = driver.app
    _save_household(driver, 1)
    assert app.status.pending == 1
    # The worker's sync took its count (0) before the save, then lost the network while pulling.
    app._sync_status(SyncStatus(online=False, phase="pulling", pending=0,
                                last_error="could not reach the server: ConnectionError"))
    driver.wait_until(lambda: app.status.phase == "pulling", what="the sync's status")
    assert app.status.pending == 1 and not app.status.online
    assert app.status.last_error == "could not reach the server: ConnectionError"
    assert any(app.t("sync.pending", n=1) in text for text in driver.visible_texts())

    # While pushing, the count is the store's, as each acknowledged batch leaves the outbox.
    _save_household(driver, 2)
    app._sync_status(SyncStatus(online=True, phase="pushing", pending=7))
    driver.wait_until(lambda: app.status.phase == "pushing", what="the pushing status")
    assert app.status.pending == app.session.store.outbox_size() == 2 and app.status.online


def test_a_failed_sync_is_explained_in_the_apps_language(driver: AppDriver) -> None:
    app = driver.app
    app._sync_done(None, NetworkError("could not reach the server: ConnectionError"))
    driver.wait_until(lambda: app.last_sync_error is not None, what="the sync's end")
    texts = " ".join(driver.visible_texts())
    assert "同步失败：无法连接服务器" in texts and "ConnectionError" not in texts
    assert not app.status.online and app.status.last_error == "无法连接服务器"
    app._sync_done(None, ServerError("the server failed (503)"))
    driver.wait_until(lambda: app.status.last_error == "服务器暂时出错", what="the server error")
    assert "503" not in " ".join(driver.visible_texts())


def test_a_sync_that_ends_after_the_app_stopped_is_dropped(driver: AppDriver) -> None:
    app = driver.app
    _save_household(driver, 1)
    app._sync_status(SyncStatus(online=True, phase="pulling"))
    app._sync_done(None, NetworkError("could not reach the server: ConnectionError"))
    app.stop()
    driver.pump(3)  # both arrive after the stop: nothing may touch the stopped app's screens
    assert app.status.phase == "idle" and app.last_sync_error is None
