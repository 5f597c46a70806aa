"""The report and inbox services of the terminal app (photo and location capture, status moves).

Plain pytest: nothing here imports Kivy.  Cameras and GPS receivers are fakes
with plyer's interface.
"""

from __future__ import annotations

import hashlib
import io
import os
from datetime import date, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

import fieldsync
from fieldsync import Store
from fieldsync.photos import normalise
from terminal_app.services import capture
from terminal_app.services.inbox import (
    actor_of,
    describe_location,
    inbox,
    my_move,
    report_steps,
    set_report_status,
    short_time,
    task_household,
    worker_actions,
)

GRID = "wc-lds-hys-01"
MARKER = b"PLAINTEXT-PHOTO-MARKER-5f3a"
CST = timezone(timedelta(hours=8))


def jpeg(path: Path, size: tuple[int, int] = (1600, 1200), exif_orientation: int | None = None) -> Path:
    img = Image.new("RGB", size, (120, 140, 160))
    exif = Image.Exif()
    if exif_orientation is not None:
        exif[0x0112] = exif_orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    # A comment segment after the header: a recognisable plaintext to look for in the store.
    data = buf.getvalue()
    path.write_bytes(data[:2] + b"\xff\xfe" + (len(MARKER) + 2).to_bytes(2, "big") + MARKER + data[2:])
    return path


class FakeCamera:
    """plyer.camera's interface: take_picture(filename, on_complete); on_complete(filename) -> bool."""

    def __init__(self, writes: bytes | None) -> None:
        self.writes = writes
        self.filename = ""
        self.removed: bool | None = None

    def take_picture(self, filename: str, on_complete: Callable[[str], bool]) -> None:
        self.filename = filename
        if self.writes is not None:
            Path(filename).write_bytes(self.writes)
        self.removed = on_complete(filename)  # plyer deletes the file when this is True


class FakeGps:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.on_location: Callable[..., None] | None = None
        self.on_status: Callable[[str, Any], None] | None = None
        self.started = self.stopped = False

    def configure(self, on_location: Callable[..., None], on_status: Callable[[str, Any], None] | None = None) -> None:
        self.on_location, self.on_status = on_location, on_status

    def start(self, minTime: int = 1000, minDistance: int = 1) -> None:  # noqa: N803 - plyer's names
        if self.fail:
            raise RuntimeError("no location provider")
        self.started = True

    def stop(self) -> None:
        self.stopped = True


# -- photos -----------------------------------------------------------------------
def test_photo_source_follows_the_platform() -> None:
    assert capture.photo_source("android") == "camera"
    assert capture.photo_source("ios") == "camera"
    for desktop in ("linux", "win", "macosx", "unknown"):
        assert capture.photo_source(desktop) == "files"


def test_photo_kind_by_content_not_name() -> None:
    assert capture.photo_kind(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "jpg"
    assert capture.photo_kind(b"\x89PNG\r\n\x1a\n\x00\x00") == "png"
    assert capture.photo_kind(b"GIF89a") is None
    assert capture.photo_kind(b"") is None


def test_chooser_filters_match_upper_case_camera_names() -> None:
    import fnmatch

    assert any(fnmatch.fnmatchcase("IMG_0042.JPG", f) for f in capture.PHOTO_FILTERS)
    assert any(fnmatch.fnmatchcase("花园山3栋.jpeg", f) for f in capture.PHOTO_FILTERS)
    assert not any(fnmatch.fnmatchcase("notes.txt", f) for f in capture.PHOTO_FILTERS)


def test_desktop_opens_the_file_chooser(tmp_path: Path) -> None:
    opened: list[Any] = []
    chosen: list[tuple[str | None, bool]] = []
    camera = FakeCamera(b"\xff\xd8\xff")
    how = capture.pick_photo("linux", on_chosen=lambda p, o: chosen.append((p, o)), open_chooser=opened.append,
                             data_dir=tmp_path, camera=camera)
    assert how == "files" and len(opened) == 1 and camera.filename == "" and chosen == []
    opened[0]("/photos/a.jpg", False)  # what the chooser does with the selected file
    assert chosen == [("/photos/a.jpg", False)]


def test_android_takes_a_picture_into_the_private_folder(tmp_path: Path) -> None:
    chosen: list[tuple[str | None, bool]] = []
    camera = FakeCamera(b"\xff\xd8\xff" + b"x" * 100)
    how = capture.pick_photo("android", on_chosen=lambda p, o: chosen.append((p, o)),
                             open_chooser=lambda cb: pytest.fail("no chooser on a tablet"), data_dir=tmp_path,
                             camera=camera)
    assert how == "camera"
    target = Path(camera.filename)
    assert target.parent == capture.camera_folder(tmp_path) and target.suffix == ".jpg"
    assert chosen == [(str(target), True)]  # owned: deleted once it is encrypted
    assert camera.removed is False  # plyer must not delete it before the app has stored it
    assert oct(target.parent.stat().st_mode & 0o777) == "0o700"


def test_cancelled_camera_gives_nothing(tmp_path: Path) -> None:
    chosen: list[tuple[str | None, bool]] = []
    capture.pick_photo("android", on_chosen=lambda p, o: chosen.append((p, o)), open_chooser=lambda cb: None,
                       data_dir=tmp_path, camera=FakeCamera(None))
    assert chosen == [(None, True)]


def test_camera_that_cannot_start_falls_back_to_the_chooser(tmp_path: Path) -> None:
    class NoCamera:
        def take_picture(self, filename: str, on_complete: Any) -> None:
            raise NotImplementedError

    opened: list[Any] = []
    how = capture.pick_photo("android", on_chosen=lambda p, o: None, open_chooser=opened.append,
                             data_dir=tmp_path, camera=NoCamera())
    assert how == "files" and len(opened) == 1


def test_store_photo_encrypts_and_keeps_the_chosen_file(store: Store, tmp_path: Path) -> None:
    photo = jpeg(tmp_path / "花园山3栋门口.jpg")
    content_hash = capture.store_photo(store, photo)
    stored = store.attachments.read(content_hash)
    assert stored == normalise(photo)  # what is kept (and sent) is the normalised photo
    assert content_hash == hashlib.sha256(stored).hexdigest()
    assert MARKER not in stored  # its metadata (the comment) is gone
    assert photo.exists()  # the worker's own file is not ours to delete
    for f in store.attachments.folder.iterdir():
        assert MARKER not in f.read_bytes()


def test_store_photo_deletes_an_owned_camera_file(store: Store, tmp_path: Path) -> None:
    shot = jpeg(tmp_path / "camera.jpg")
    content_hash = capture.store_photo(store, shot, owned=True)
    assert not shot.exists() and store.attachments.exists(content_hash)


@pytest.mark.parametrize("owned", [False, True])
def test_store_photo_refuses_what_is_not_a_photo(store: Store, tmp_path: Path, owned: bool) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a photo at all")
    with pytest.raises(capture.PhotoError) as err:
        capture.store_photo(store, bad, owned=owned)
    assert err.value.code == "not_a_photo"
    assert bad.exists() is not owned  # an owned file never stays behind, even when refused
    assert store.status().attachments == 0


def test_store_photo_missing_and_too_big(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(capture.PhotoError) as err:
        capture.store_photo(store, tmp_path / "gone.jpg")
    assert err.value.code == "missing"
    monkeypatch.setattr(capture, "MAX_PHOTO_BYTES", 1000)
    with pytest.raises(capture.PhotoError) as err:
        capture.store_photo(store, jpeg(tmp_path / "big.jpg"))
    assert err.value.code == "too_big"


def test_thumbnail_is_small_and_upright(tmp_path: Path) -> None:
    data = jpeg(tmp_path / "wide.jpg", (2000, 1000)).read_bytes()
    small, kind = capture.thumbnail(data, max_px=480)
    assert kind == "jpg" and len(small) < len(data)
    with Image.open(io.BytesIO(small)) as img:
        assert img.size == (480, 240)
    # EXIF orientation 6: the camera held upright stores the picture sideways.
    sideways = jpeg(tmp_path / "sideways.jpg", (400, 200), exif_orientation=6).read_bytes()
    with Image.open(io.BytesIO(capture.thumbnail(sideways)[0])) as img:
        assert img.size == (200, 400)
    with pytest.raises(capture.PhotoError):
        capture.thumbnail(b"%PDF-1.7 not a photo")


def test_thumbnail_of_a_truncated_photo_is_a_photo_error(tmp_path: Path) -> None:
    data = jpeg(tmp_path / "cut.jpg").read_bytes()[:300]
    with pytest.raises(capture.PhotoError):
        capture.thumbnail(data)


def test_discard_leftovers_removes_only_old_camera_files(tmp_path: Path) -> None:
    folder = capture.camera_folder(tmp_path)
    folder.mkdir()
    old, new = folder / "photo-old.jpg", folder / "photo-new.jpg"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    assert capture.discard_leftovers(tmp_path, older_than_s=600, now=lambda: 2_000_100) == 1
    assert not old.exists() and new.exists()
    assert capture.discard_leftovers(tmp_path / "nowhere") == 0


# -- location -----------------------------------------------------------------------
def test_location_value_prefers_the_fix_and_keeps_the_typed_place(store: Store) -> None:
    fix = capture.GpsFix(30.5431234567, 114.3075123456, 8.4)
    assert capture.location_value(fix, "  粮道街花园山社区3栋门口 ") == {
        "lat": 30.543123, "lon": 114.307512, "accuracy": 8, "place": "粮道街花园山社区3栋门口"}
    assert capture.location_value(capture.GpsFix(30.5, 114.3), "") == {"lat": 30.5, "lon": 114.3}
    assert capture.location_value(None, " 3栋门口 ") == "3栋门口"
    assert capture.location_value(None, "   ") is None
    # every shape is a valid report location for the store
    for loc in (capture.location_value(fix, "3栋"), "3栋门口"):
        store.put("reports", {"grid_id": GRID, "category": "占道经营", "description": "d", "location": loc,
                              "status": "submitted"})


def test_no_gps_on_the_desktop() -> None:
    source = capture.LocationSource("linux")
    assert not source.available
    assert source.start(lambda f: pytest.fail("no fix"), lambda c: pytest.fail("no problem")) is False


def test_gps_fix_after_permission() -> None:
    gps = FakeGps()
    fixes: list[capture.GpsFix] = []
    source = capture.LocationSource("android", gps=gps, request_permission=lambda cb: cb(True))
    assert source.start(fixes.append, lambda c: pytest.fail(c)) is True
    assert gps.started and source.running
    assert gps.on_location is not None
    gps.on_location(lat=30.54, lon=114.31, speed=0.0, bearing=0.0, altitude=20.0, accuracy=12.0)
    gps.on_location(lat=None, lon=None)  # a malformed callback is ignored
    assert fixes == [capture.GpsFix(30.54, 114.31, 12.0)]
    source.stop()
    assert gps.stopped and not source.running


@pytest.mark.parametrize("granted, fail, problem", [(False, False, "permission"), (True, True, "unavailable")])
def test_gps_problems_are_reported(granted: bool, fail: bool, problem: str) -> None:
    problems: list[str] = []
    source = capture.LocationSource("android", gps=FakeGps(fail), request_permission=lambda cb: cb(granted))
    source.start(lambda f: pytest.fail("no fix"), problems.append)
    assert problems == [problem] and not source.running


def test_gps_switched_off_is_reported() -> None:
    gps = FakeGps()
    problems: list[str] = []
    capture.LocationSource("android", gps=gps, request_permission=lambda cb: cb(True)).start(
        lambda f: None, problems.append)
    assert gps.on_status is not None
    gps.on_status("provider-disabled", "gps")
    assert problems == ["disabled"]


def test_capture_does_not_import_kivy() -> None:
    source = Path(capture.__file__).read_text(encoding="utf-8")
    assert "\nimport kivy" not in source and "\nfrom kivy" not in source


# -- inbox ---------------------------------------------------------------------------
def _report(store: Store, status: str = "submitted", **extra: Any) -> str:
    return store.put("reports", {"grid_id": GRID, "category": "违规张贴广告", "description": "3栋门口小广告",
                                 "reporter_id": "w-lijing", "reported_at": "2026-11-28T09:00:00+08:00",
                                 "status": status, **extra})


def test_inbox_lists_open_tasks_then_reports(store: Store) -> None:
    store.put("tasks", {"id": "t2", "grid_id": GRID, "assignee": "w-lijing", "kind": "走访", "due": "2026-12-09"})
    store.put("tasks", {"id": "t1", "grid_id": GRID, "assignee": "w-lijing", "kind": "低保复核", "title": "复核",
                        "due": "2026-12-01", "related": {"household_id": "h-1"}})
    store.put("tasks", {"id": "t3", "grid_id": GRID, "assignee": "w-lijing", "kind": "走访", "status": "done"})
    store.put("tasks", {"id": "t4", "grid_id": GRID, "assignee": "w-zhang", "kind": "走访"})
    rid = _report(store, "dispatched", department="城管")
    items = inbox(store, "w-lijing")
    assert [(i.kind, i.id) for i in items] == [("task", "t1"), ("task", "t2"), ("report", rid)]
    assert items[2].status == "dispatched" and items[2].department == "城管"
    assert task_household(store.get("tasks", "t1")) == "h-1"
    assert task_household(store.get("tasks", "t2")) is None


def test_report_steps_follow_the_timeline() -> None:
    timeline = [{"status": "dispatched", "at": "2026-11-28T10:00:00+08:00", "by": "cc-wangcc"},
                {"status": "submitted", "at": "2026-11-28T09:00:00+08:00", "by": "w-lijing"}]
    report = {"status": "dispatched", "timeline": timeline, "reporter_id": "w-lijing"}
    assert [s["status"] for s in report_steps(report)] == ["submitted", "dispatched"]


def test_report_steps_show_my_move_before_the_server_records_it() -> None:
    timeline = [{"status": "resolved", "at": "2026-11-28T16:00:00+08:00", "by": "城管"}]
    report = {"status": "confirmed", "timeline": timeline, "reporter_id": "w-lijing"}
    last = report_steps(report, {"status": "confirmed", "at": "2026-11-28T17:00:00+08:00"})[-1]
    assert last == {"status": "confirmed", "at": "2026-11-28T17:00:00+08:00", "by": "w-lijing"}
    # a status the timeline does not explain, and no move of ours: shown without time or author
    assert report_steps(report)[-1] == {"status": "confirmed", "at": "", "by": ""}
    assert report_steps(report, {"status": "reopened", "at": "x"})[-1]["by"] == ""


def test_report_steps_without_a_timeline() -> None:
    steps = report_steps({"status": "submitted", "reported_at": "2026-11-28T09:00:00+08:00", "reporter_id": "w-1"})
    assert steps == [{"status": "submitted", "at": "2026-11-28T09:00:00+08:00", "by": "w-1"}]


def test_actor_of() -> None:
    depts = {"城管", "民政"}
    assert actor_of("w-lijing", "w-lijing", depts) == ("me", "w-lijing")
    assert actor_of("w-zhang", "w-lijing", depts) == ("other", "w-zhang")
    assert actor_of("cc-wangcc", "w-lijing", depts) == ("command", "cc-wangcc")
    assert actor_of("command-centre", "w-lijing", depts) == ("command", "command-centre")
    assert actor_of("城管", "w-lijing", depts) == ("department", "城管")
    assert actor_of("dept-3", "w-lijing", depts) == ("department", "")
    assert actor_of("", "", depts) == ("other", "")


def test_short_time() -> None:
    today = date(2026, 11, 28)
    assert short_time("2026-11-28T09:05:00+08:00", today, CST) == "11-28 09:05"
    assert short_time("2026-11-28T01:05:00+00:00", today, CST) == "11-28 09:05"  # shown in local time
    assert short_time("2024-03-05T10:22:00+08:00", today, CST) == "2024-03-05 10:22"
    assert short_time("2026-11-28T09:05:00", today, CST) == "11-28 09:05"  # no offset: as written
    assert short_time("", today) == "" and short_time(None, today) == "" and short_time("soon", today) == ""


def test_worker_actions_only_after_resolved() -> None:
    assert worker_actions("resolved") == ["confirmed", "reopened"]
    for status in ("submitted", "dispatched", "in_progress", "confirmed", "reopened", "rejected", None):
        assert worker_actions(status) == []


def test_confirm_a_resolved_report(store: Store) -> None:
    rid = _report(store, "resolved")
    before = store.outbox_size()
    set_report_status(store, rid, "confirmed", at="2026-11-28T17:00:00+08:00")
    assert store.get("reports", rid)["status"] == "confirmed"
    assert store.outbox_size() == before + 1
    assert my_move(store, rid) == {"status": "confirmed", "at": "2026-11-28T17:00:00+08:00"}
    assert my_move(store, "other") is None


@pytest.mark.parametrize("old, new", [("in_progress", "confirmed"), ("dispatched", "resolved"),
                                      ("resolved", "dispatched"), ("resolved", "resolved"),
                                      ("confirmed", "reopened")])
def test_moves_a_worker_may_not_make_are_refused(store: Store, old: str, new: str) -> None:
    rid = _report(store, old)
    before = store.outbox_size()
    with pytest.raises(fieldsync.ValidationError) as err:
        set_report_status(store, rid, new)
    assert err.value.field == "status"
    assert store.get("reports", rid)["status"] == old and store.outbox_size() == before
    assert my_move(store, rid) is None


def test_describe_location() -> None:
    assert describe_location("粮道街花园山社区3栋门口") == "粮道街花园山社区3栋门口"
    assert describe_location({"lat": 30.543123, "lon": 114.307512}) == "30.54312, 114.30751"
    assert describe_location({"lat": 30.5, "lon": 114.3, "place": "3栋门口"}) == "3栋门口"
    assert describe_location(None) == "" and describe_location({"lat": "x"}) == ""


def test_discard_photo_keeps_what_a_report_refers_to(store: Store, tmp_path: Path) -> None:
    used = capture.store_photo(store, jpeg(tmp_path / "used.jpg"))
    spare = capture.store_photo(store, jpeg(tmp_path / "spare.jpg", (800, 600)))
    _report(store, attachments=[used])
    assert capture.discard_photo(store, used) is False and store.attachments.exists(used)
    assert capture.discard_photo(store, spare) is True and not store.attachments.exists(spare)
