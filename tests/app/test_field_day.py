"""The real app, offscreen, against a real district server on 127.0.0.1: a grid worker's day.

Enroll with a code and choose a PIN, lock and unlock (a wrong PIN is
refused plainly), find a household by a resident's ID number, record a visit
and report an incident with a photo while the server is down, come back
online (the app syncs by itself), and see the statuses the command centre
and the department set.  Every screen is saved to docs/screenshots/.
SDL2's offscreen driver renders for real; KIVY_GL_BACKEND is never mocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from terminal_app.driver import offscreen

offscreen(quiet=True)  # before Kivy is imported anywhere in this process

from PIL import Image  # noqa: E402

from fieldsync import KdfParams  # noqa: E402
from fieldsync.photos import normalise  # noqa: E402
from server_stub.demo import WORKERS, build_demo  # noqa: E402
from server_stub.demo_data import GRIDS, households, residents  # noqa: E402
from server_stub.district import District  # noqa: E402
from server_stub.local import LocalServer  # noqa: E402
from server_stub.replica import Actor  # noqa: E402
from terminal_app.app import GridWorkerApp  # noqa: E402
from terminal_app.driver import AppDriver  # noqa: E402
from terminal_app.fieldday import PIN, FieldDay  # noqa: E402

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WORKER = "w-lijing"


@pytest.fixture(scope="module")
def district_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[District, LocalServer]]:
    root = tmp_path_factory.mktemp("district")
    db_url = f"sqlite:///{root / 'district.db'}"
    district = District(db_url)
    build_demo(district)
    server = LocalServer(db_url, log=root / "server.log").start()
    yield district, server
    server.stop()
    district.close()


def test_a_field_day(district_server: tuple[District, LocalServer], tmp_path: Path) -> None:
    district, server = district_server
    app = GridWorkerApp(tmp_path / "tablet", kdf=KdfParams(n=2**14))
    app.config_file.probe_interval_s = 1
    day = FieldDay(AppDriver(app), SHOTS, say=lambda m: None)
    try:
        _play(day, district, server, tmp_path)
    finally:
        day.driver.close()


def _play(day: FieldDay, district: District, server: LocalServer, tmp_path: Path) -> None:
    app = day.app
    code, _ = district.issue_code(WORKER)
    day.enroll(server.url, code)
    assert app.worker_id == WORKER
    assert len(app.screen.rows) == 300
    # One status line and one sync button, also when another app ran in this process before
    # (tests/app/test_auto_lock.py): the style rules must not be applied twice.
    assert len(app.syncbar.children) == 2

    warning = day.lock_and_unlock(PIN)
    assert "9" in warning  # "wrong PIN: 9 attempts left" said plainly

    gi = next(i for wid, _, i in WORKERS if wid == WORKER)
    grid = GRIDS[gi]["id"]
    person = residents(households(300, grid, 2019 + gi), seed=2019 + gi)[7]
    hid = day.find_household(person["id_number"].lower())  # a lower-case x still finds it
    assert hid == person["household_id"]
    assert len(app.manager.get_screen("overview").rows) == 1

    server.stop()  # no signal in the stairwell
    day.record_visit()
    assert app.status.pending == 1
    photo = tmp_path / "poster.jpg"
    Image.new("RGB", (1200, 900), (200, 190, 170)).save(photo, quality=80)
    day.report_incident(photo)
    assert app.status.pending == 2
    store = app.session.require_store()
    report = day.my_last_report()
    assert report["status"] == "submitted" and len(report["attachments"]) == 1
    assert store.attachments.exists(report["attachments"][0])
    assert normalise(photo) == store.attachments.read(report["attachments"][0])  # stored normalised

    server.start()  # signal is back: the app notices and syncs by itself
    day.wait_synced()
    on_server = district.get("reports", report["id"])
    assert on_server is not None and on_server["status"] == "submitted"
    assert on_server["attachments"] == report["attachments"]
    visits = [v for v in _server_visits(district, hid) if v.get("purpose") == "独居老人探访"
              and v.get("worker_id") == WORKER and "血压偏高" in v.get("notes", "")]
    assert len(visits) == 1

    district.write(Actor("cc-wangcc", "command"), "reports", report["id"], {"status": "dispatched", "department": "城管"})
    day.see_status("dispatched")  # arrives through the long-poll, no button pressed
    district.write(Actor("dept-1", "department"), "reports", report["id"], {"status": "in_progress"})
    day.see_status("in_progress")
    texts = day.driver.visible_texts()
    assert "处理中" in texts and "已派发" in texts and "已上报" in texts
    day.tour()
    assert app.lang == "zh"

    names = {shot.screen for shot in day.shots}
    assert names >= {"setup", "unlock", "overview", "household", "visit", "report", "inbox", "review", "settings"}
    for shot in day.shots:
        assert shot.path.stat().st_size > 10_000, shot  # a rendered screen, not an empty frame


def _server_visits(district: District, household_id: str) -> list[dict[str, Any]]:
    with district.db.transaction() as tx:
        ids = [r[0] for r in tx.all("SELECT id FROM records WHERE collection = 'visits'")]
    found = (district.get("visits", rid) for rid in ids)
    return [v for v in found if v and v.get("household_id") == household_id]
