"""A visit keeps a photo like a report does, and the sync worker's prefetch hook fetches the
report photos a tablet lacks (plain pytest, no Kivy; an in-process district)."""

from __future__ import annotations

import io
import threading
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

import fieldsync
from fieldsync import KdfParams, Store
from fieldsync.sync import SyncClient, SyncResult, enroll
from fieldsync.transport import ASGITransport
from server_stub.app import create_app
from server_stub.attachments import ATTACHMENTS_ENV
from server_stub.district import District
from server_stub.replica import Actor
from terminal_app.config import AppConfig
from terminal_app.services import capture
from terminal_app.services.forms import PHOTO_MISSING, VisitForm, save_visit, submit_visit
from terminal_app.services.sync_worker import (
    SyncWorker,
    missing_report_photos,
    network_is_metered,
    prefetch_missing_photos,
)

PIN = "258025"
GRID = "g1"


def photo_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (seed % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()  # capture.store_photo normalises it


def add_photo(store: Store, data: bytes, tmp_path: Path, name: str = "p.jpg") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return capture.store_photo(store, path)


# -- the visit form -------------------------------------------------------------------------

@pytest.fixture
def store(store_path: Path, fast_kdf: fieldsync.KdfParams) -> Store:
    return Store.create(store_path, PIN, kdf=fast_kdf)


def test_save_visit_stores_attachments(store: Store, tmp_path: Path) -> None:
    content_hash = add_photo(store, photo_bytes(1), tmp_path)
    vid = save_visit(store, grid_id=GRID, household_id="h-1", worker_id="w1", purpose="政策宣传",
                     attachments=[content_hash])
    assert store.get("visits", vid)["attachments"] == [content_hash]
    plain = save_visit(store, grid_id=GRID, household_id="h-1", worker_id="w1", purpose="政策宣传")
    assert "attachments" not in store.get("visits", plain)
    # a photo a saved visit refers to is not thrown away when a form lets go of it
    assert not capture.discard_photo(store, content_hash)
    assert store.attachments.exists(content_hash)


def test_the_visit_draft_keeps_the_photo_and_submit_saves_it(store: Store, tmp_path: Path) -> None:
    content_hash = add_photo(store, photo_bytes(2), tmp_path)
    form = VisitForm(purpose="政策宣传", photo=content_hash)
    assert not VisitForm(photo=content_hash).is_empty()
    assert VisitForm.from_draft(form.to_draft()) == form
    assert VisitForm.from_draft({"photo": 7}).photo == ""
    vid = submit_visit(store, form, grid_id=GRID, household_id="h-1", worker_id="w1", today=date(2024, 6, 15))
    assert store.get("visits", vid)["attachments"] == [content_hash]


def test_submit_refuses_a_photo_no_longer_on_the_tablet(store: Store) -> None:
    form = VisitForm(purpose="政策宣传", photo="0" * 64)
    with pytest.raises(fieldsync.ValidationError) as info:
        submit_visit(store, form, grid_id=GRID, household_id="h-1", worker_id="w1", today=date(2024, 6, 15))
    assert info.value.field == "attachments" and info.value.problem == PHOTO_MISSING
    assert store.list("visits") == []


def test_the_setting_is_off_by_default_and_kept(tmp_path: Path) -> None:
    cfg = AppConfig.load(tmp_path)
    assert cfg.prefetch_photos_on_wifi is False
    cfg.prefetch_photos_on_wifi = True
    cfg.save()
    assert AppConfig.load(tmp_path).prefetch_photos_on_wifi is True


def test_the_desktop_is_not_metered() -> None:
    assert network_is_metered("linux") is False
    assert network_is_metered("win") is False


# -- the prefetch hook ---------------------------------------------------------------------------

@pytest.fixture
def district(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[District]:
    monkeypatch.setenv(ATTACHMENTS_ENV, str(tmp_path / "server-attachments"))
    d = District(f"sqlite:///{tmp_path / 'district.db'}")
    d.add_worker("w1", "李璟")
    d.add_worker("w2", "小张")
    d.assign("w1", GRID)
    d.assign("w2", GRID)
    d.write_many(Actor("admin", "command"), "grids", [{"id": GRID, "name": "花园山1网格"}])
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def transport(district: District) -> Iterator[ASGITransport]:
    t = ASGITransport(create_app(district))
    yield t
    t.close()


def device(district: District, transport: ASGITransport, tmp_path: Path, worker: str) -> SyncClient:
    store = Store.create(tmp_path / f"{worker}.fsdb", PIN, kdf=KdfParams(n=2**10))
    code, _ = district.issue_code(worker)
    enroll(store, "http://in-process", code, transport=transport)
    return SyncClient(store, transport, sleep=lambda s: None)


def test_the_worker_prefetch_hook_downloads_a_missing_photo(district: District, transport: ASGITransport,
                                                            tmp_path: Path) -> None:
    owner = device(district, transport, tmp_path, "w1")
    photo = photo_bytes(3)
    content_hash = add_photo(owner.store, photo, tmp_path)
    owner.store.put("reports", {"grid_id": GRID, "category": "安全隐患", "description": "井盖松动",
                                "reporter_id": "w1", "attachments": [content_hash], "status": "submitted"})
    owner.sync()

    colleague = device(district, transport, tmp_path, "w2")
    done = threading.Event()
    results: list[tuple[SyncResult | None, Exception | None]] = []
    prefetched: list[int] = []

    def on_done(result: SyncResult | None, error: Exception | None) -> None:
        results.append((result, error))

    def prefetch(client: SyncClient) -> None:
        prefetched.append(prefetch_missing_photos(client))
        done.set()

    worker = SyncWorker(lambda on_status: colleague, lambda: True, on_status=lambda s: None, on_done=on_done,
                        prefetch=prefetch)
    worker.start(watch=False)
    worker.request()
    try:
        assert done.wait(30), "the prefetch hook was not called after the sync"
    finally:
        worker.stop()

    assert results and results[0][1] is None
    assert colleague.store.list("reports")[0]["attachments"] == [content_hash]
    assert prefetched[0] == 1  # a later sync (the worker keeps running) finds nothing missing
    assert colleague.store.attachments.read(content_hash) == owner.store.attachments.read(content_hash)
    assert missing_report_photos(colleague.store) == []


def test_prefetch_skips_what_cannot_be_fetched(district: District, transport: ASGITransport,
                                               tmp_path: Path) -> None:
    dev = device(district, transport, tmp_path, "w1")
    dev.sync()
    dev.store.put("reports", {"grid_id": GRID, "category": "安全隐患", "description": "x",
                              "attachments": ["f" * 64], "status": "submitted"})
    assert missing_report_photos(dev.store) == ["f" * 64]
    assert prefetch_missing_photos(dev) == 0


def test_a_failing_prefetch_does_not_stop_the_worker() -> None:
    calls: list[Any] = []
    done = threading.Event()

    class Client:
        def sync(self) -> str:
            return "ok"

    def prefetch(client: Any) -> None:
        done.set()
        raise RuntimeError("boom")

    worker = SyncWorker(lambda s: Client(), lambda: True, on_status=lambda s: None,  # type: ignore[arg-type,return-value]
                        on_done=lambda r, e: calls.append((r, e)), prefetch=prefetch)
    worker.start(watch=False)
    worker.request()
    try:
        assert done.wait(10)
    finally:
        worker.stop()
    assert calls == [("ok", None)] and worker.online
