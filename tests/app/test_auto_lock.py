"""The app locks itself after inactivity, and keeps its screens private on Android.

The real app runs offscreen (SDL2's offscreen driver, a private KIVY_HOME,
KIVY_NO_ARGS=1; KIVY_GL_BACKEND is never mocked).  Auto-lock is checked in
real time: with ``lock_timeout_s`` at 2 s, key presses keep the app open past
its 5-second idle check; once they stop, the app closes the store (the data
key is dropped), shows the PIN screen and no record is left on any screen.

FLAG_SECURE and ``android.allow_backup = False`` cannot run here (no
Android): buildozer.spec is read as buildozer reads it, ``on_start`` must
call ``_secure_window``, and ``_secure_window`` is run with
``platform == "android"`` against a recording stand-in for the Java bridge
(pyjnius and the ``android`` module do not exist off a tablet), which must
receive ``getWindow().setFlags(FLAG_SECURE, FLAG_SECURE)`` on the UI thread.
Removing any of these makes a test here fail.
"""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator

import pytest

from terminal_app.driver import offscreen

offscreen(quiet=True)  # before Kivy is imported anywhere in this process

from fieldsync import KdfParams, Store  # noqa: E402
from terminal_app import app as app_module  # noqa: E402
from terminal_app.app import GridWorkerApp  # noqa: E402
from terminal_app.driver import AppDriver  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PIN = "482916"
KDF = KdfParams(n=2**10)
GRID = "wc-lds-hys-01"
HEADS = ("欧阳建国", "司马秀英", "诸葛卫东")
SHIFT = 304  # a key that does nothing in the app: only the inactivity timer sees it


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[AppDriver]:
    data = tmp_path / "tablet"
    data.mkdir()
    store = Store.create(data / "tablet.fsdb", PIN, kdf=KDF)
    for i, head in enumerate(HEADS):
        store.put("households", {"id": f"h-{i}", "grid_id": GRID, "address": f"武昌区粮道街花园山社区{i + 1}栋1单元101",
                                 "head_name": head, "phone": f"1390713000{i}", "members": 1})
    store.close()
    (data / "settings.json").write_text(json.dumps({"lock_timeout_s": 2}), encoding="utf-8")
    app = GridWorkerApp(data, kdf=KDF, sync_in_background=False)
    d = AppDriver(app)
    try:
        yield d
    finally:
        d.close()


def _unlock(d: AppDriver) -> None:
    app = d.app
    assert app.manager.current == "unlock"
    d.type(app.screen.ids.pin, PIN)
    d.tap(app.t("unlock.button"))
    d.wait_until(lambda: app.manager.current == "overview", what="the overview after unlocking")


def _heads_on_screen(d: AppDriver) -> list[str]:
    return [h for h in HEADS if any(h in text for text in d.visible_texts())]


def test_app_locks_after_inactivity_and_forgets_what_it_showed(driver: AppDriver) -> None:
    from kivy.core.window import Window

    d, app = driver, driver.app
    assert app.config_file.lock_timeout_s == 2
    _unlock(d)
    store = app.session.store
    assert store is not None
    assert set(_heads_on_screen(d)) == set(HEADS), "the overview shows the households"

    # In use: a key press every 0.3 s for 7 s (past at least one 5-second idle check) keeps it open.
    end = time.monotonic() + 7
    while time.monotonic() < end:
        Window.dispatch("on_key_down", SHIFT, 0, None, [])
        d.pump(1)
        time.sleep(0.3)
    assert app.session.unlocked and app.manager.current == "overview", "the app locked while in use"

    # Left alone: the next idle check locks it.
    start = time.monotonic()
    d.wait_until(lambda: not app.session.unlocked, timeout=12, what="the app to lock itself")
    waited = time.monotonic() - start
    d.pump(3)
    assert app.manager.current == "unlock"
    assert store._closed and store._dek == b"", "locking must close the store and drop the data key"
    assert app.grid is None and app.drafts is None
    assert _heads_on_screen(d) == []
    assert app.manager.get_screen("overview").rows == [], "the overview must forget its rows"
    assert waited <= 7.5, f"locked {waited:.1f} s after the last use (timeout 2 s, checked every 5 s)"

    _unlock(d)  # and the worker gets back in with the PIN
    assert set(_heads_on_screen(d)) == set(HEADS)


def test_lock_timeout_comes_from_settings_and_defaults_to_five_minutes(tmp_path: Path) -> None:
    from terminal_app.config import AppConfig

    assert AppConfig.load(tmp_path).lock_timeout_s == 300
    # and the idle check really compares against it (not a constant)
    source = inspect.getsource(GridWorkerApp._check_idle)
    assert "lock_timeout_s" in source and "self.lock()" in source


# -- Android: FLAG_SECURE and no backups ------------------------------------------------------

def test_buildozer_spec_turns_android_backup_off() -> None:
    spec = configparser.ConfigParser()
    spec.read(REPO / "buildozer.spec", encoding="utf-8")
    assert spec.get("app", "android.allow_backup").strip().lower() in ("false", "0"), \
        "the encrypted store must stay out of Android cloud and device-to-device backups"
    # FLAG_SECURE is set in code, not in the spec: no option may switch screenshots back on
    assert not any("secure" in key for key in spec["app"]), dict(spec["app"])


def test_on_start_sets_flag_secure() -> None:
    tree = ast.parse(inspect.getsource(GridWorkerApp.on_start).strip())
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "_secure_window" in calls, "GridWorkerApp.on_start must call _secure_window()"


class _JavaWindow:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def setFlags(self, flags: int, mask: int) -> None:  # noqa: N802 - the Java name
        self.calls.append((flags, mask))


def test_secure_window_sets_flag_secure_on_android(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs the Android branch of ``_secure_window`` against a recording stand-in of the Java bridge."""
    window = _JavaWindow()
    on_ui_thread: list[str] = []
    flag_secure = 0x2000  # android.view.WindowManager.LayoutParams.FLAG_SECURE

    def autoclass(name: str) -> Any:
        if name == "org.kivy.android.PythonActivity":
            return types.SimpleNamespace(mActivity=types.SimpleNamespace(getWindow=lambda: window))
        if name == "android.view.WindowManager$LayoutParams":
            return types.SimpleNamespace(FLAG_SECURE=flag_secure)
        raise AssertionError(f"unexpected Java class {name}")

    def run_on_ui_thread(fn: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            on_ui_thread.append(fn.__name__)
            return fn(*args)
        return wrapper

    android = types.ModuleType("android")
    runnable = types.ModuleType("android.runnable")
    runnable.run_on_ui_thread = run_on_ui_thread  # type: ignore[attr-defined]
    android.runnable = runnable  # type: ignore[attr-defined]
    jnius = types.ModuleType("jnius")
    jnius.autoclass = autoclass  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "android", android)
    monkeypatch.setitem(sys.modules, "android.runnable", runnable)
    monkeypatch.setitem(sys.modules, "jnius", jnius)

    monkeypatch.setattr(app_module, "platform", "linux")
    app_module._secure_window()
    assert window.calls == [], "off Android nothing is touched"

    monkeypatch.setattr(app_module, "platform", "android")
    app_module._secure_window()
    assert window.calls == [(flag_secure, flag_secure)]
    assert on_ui_thread, "Android requires window flags to be set on the UI thread"
