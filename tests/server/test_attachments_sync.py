"""Photos travel with reports (docs/protocol.md §16), device side, against a real uvicorn server.

Every test runs on SQLite and on PostgreSQL (``live`` starts uvicorn on the test's district).
The device uploads after its record sync, resumably; a corrupted chunk is refused and sent
again; the same photo is stored once; a device of another grid cannot fetch it, one of the same
grid fetches it on demand; no plaintext photo bytes are on a device; the cache keeps its limit.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from serverkit import SIGNED_HEADERS, Tap, audit_actions

from fieldsync import Store
from fieldsync.errors import NetworkError, RequestRejected
from fieldsync.identity import Identity
from fieldsync.photos import normalise
from fieldsync.protocol import CHUNK_BYTES, MAX_CHUNK_BYTES
from fieldsync.sync import SyncClient, SyncProgress, SyncStatus
from fieldsync.transport import Request, Response, Transport
from server_stub.attachments import ATTACHMENTS_ENV
from server_stub.district import District
from terminal_app.services.capture import PhotoFetch

STATUS = "/v1/attachments/status"
WINDOW = 64


@pytest.fixture(autouse=True)
def server_attachments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One attachments folder per test, shared by the in-process district and the live server."""
    folder = tmp_path / "server-attachments"
    monkeypatch.setenv(ATTACHMENTS_ENV, str(folder))
    return folder


# -- photos ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def camera_photo(seed: int, size: tuple[int, int] = (2400, 1800)) -> bytes:
    """A phone-like JPEG: shapes, texture, EXIF with GPS; about 1-2 MB at quality 92."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x, y, x + rng.randrange(50, 600), y + rng.randrange(50, 600))
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    img = Image.blend(img, Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)), 0.2)
    exif = Image.Exif()
    exif[0x010F] = "FieldCam"
    exif[0x8825] = {1: "N", 2: (30.0, 33.0, 12.5), 3: "E", 4: (114.0, 18.0, 5.0)}
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


@lru_cache(maxsize=None)
def normalised_photo(seed: int) -> bytes:
    return normalise(io.BytesIO(camera_photo(seed)))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report(grid: str, content_hash: str, n: int = 0) -> dict[str, Any]:
    return {"grid_id": grid, "category": "违规张贴广告", "description": f"3栋门口小广告 {n}",
            "attachments": [content_hash], "status": "submitted", "reporter_id": "w1"}


def add_report_with_photo(store: Store, data: bytes, grid: str = "g1", n: int = 0) -> str:
    content_hash = store.attachments.add(io.BytesIO(data)).hash
    store.put("reports", report(grid, content_hash, n))
    return content_hash


def on_server(district: District, content_hash: str) -> bytes:
    state = district.attachments.state(content_hash)
    assert state.complete, f"the server holds {state}"
    out = bytearray()
    while len(out) < state.received:
        out += district.attachments.open_range(content_hash, len(out), MAX_CHUNK_BYTES)
    return bytes(out)


def puts(tap: Tap) -> list[Request]:
    return [e.request for e in tap.exchanges if e.request.method == "PUT"]


def offset_of(request: Request) -> int:
    assert request.query.startswith("offset=")
    return int(request.query[len("offset="):])


# -- transports that misbehave -------------------------------------------------------------

@dataclass
class CutAfter:
    """Forwards requests until ``limit`` PUTs went through; from then on every PUT fails (no signal)."""

    inner: Transport
    limit: int | None = None
    sent_puts: int = 0

    def handle(self, request: Request) -> Response:
        if request.method == "PUT":
            if self.limit is not None and self.sent_puts >= self.limit:
                raise NetworkError("the connection dropped in the stairwell")
            self.sent_puts += 1
        return self.inner.handle(request)


@dataclass
class FlipByte:
    """Flips one byte in the body of the ``which``-th PUT (1-based; every one from it on when
    ``every``) and re-signs it, so the signature is valid and only the content is damaged."""

    inner: Transport
    identity: Identity | None = None
    which: int = 2
    every: bool = False
    seen: int = 0
    flipped: list[int] = field(default_factory=list)

    def handle(self, request: Request) -> Response:
        if request.method == "PUT" and self.identity is not None:
            self.seen += 1
            if self.seen == self.which or (self.every and self.seen > self.which):
                body = bytearray(request.body)
                body[len(body) // 2] ^= 0x01
                kept = {k: v for k, v in request.headers.items() if k.lower() not in SIGNED_HEADERS}
                signed = self.identity.sign(request.method, request.path, request.query, bytes(body))
                request = Request(request.method, request.path, request.query, {**kept, **signed}, bytes(body))
                self.flipped.append(offset_of(request))
        return self.inner.handle(request)


# -- a report with a photo --------------------------------------------------------------------

def test_a_report_with_a_photo_syncs_and_the_photo_follows(district, make_device, live):
    tap = Tap(live)
    statuses: list[SyncStatus] = []
    dev = make_device("w1", tap, on_status=statuses.append)
    photo = normalised_photo(1)
    assert len(photo) < len(camera_photo(1)) / 3
    content_hash = add_report_with_photo(dev.store, photo)
    assert dev.store.attachments.state(content_hash).origin == "local"
    assert not dev.store.attachments.state(content_hash).confirmed

    seen: list[SyncProgress] = []
    result = dev.sync(progress=seen.append)

    assert result.pushed == 1 and result.uploads is not None
    assert result.uploads.uploaded == 1 and result.uploads.error is None and result.uploads.pending == 0
    assert result.uploads.bytes_sent == len(photo)
    assert on_server(district, content_hash) == photo
    assert dev.store.attachments.state(content_hash).confirmed
    # records first, then the photo: the record is what lets the device send it
    paths = [e.request.path for e in tap.exchanges]
    assert paths.index("/v1/push") < paths.index(STATUS) < paths.index(f"/v1/attachments/{content_hash}")
    sent = puts(tap)
    assert [offset_of(r) for r in sent] == list(range(0, len(photo), CHUNK_BYTES))
    assert all(len(r.body) == CHUNK_BYTES for r in sent[:-1]) and sent[-1].body
    assert all(r.headers["X-Fieldsync-Attachment-Size"] == str(len(photo)) for r in sent)
    assert all("Content-Encoding" not in r.headers for r in sent)
    # progress in bytes, reaching the whole photo; the status showed "uploading" meanwhile
    uploading = [p for p in seen if p.phase == "uploading"]
    assert uploading[-1].attachment_bytes == uploading[-1].attachment_total == len(photo)
    assert [p.attachment_bytes for p in uploading] == sorted(p.attachment_bytes for p in uploading)
    assert any(s.phase == "uploading" for s in statuses)
    final = dev.client.status
    assert final.phase == "idle" and final.photos_pending == 0 and final.upload_error is None

    tap.clear()
    again = dev.sync()
    assert not puts(tap) and not tap.to(STATUS), "a confirmed photo is not asked about again"
    assert again.uploads is not None and again.uploads.uploaded == 0


def test_an_upload_cut_off_resumes_from_the_offset_the_server_reports(district, make_device, live):
    cut = CutAfter(live)
    tap = Tap(cut)
    dev = make_device("w1", tap)
    photo = camera_photo(2)  # stored as it came: several chunks to send
    assert len(photo) > 4 * CHUNK_BYTES
    content_hash = add_report_with_photo(dev.store, photo)
    cut.limit = 2

    result = dev.sync()  # the record goes; the photo stops after two chunks, quietly

    assert result.pushed == 1 and district.get("reports", dev.store.list("reports")[0]["id"]) is not None
    assert result.uploads is not None and result.uploads.error and "stairwell" in result.uploads.error
    assert result.uploads.pending == 1 and result.uploads.uploaded == 0
    status = dev.client.status
    assert status.last_error is None and status.online, "the record sync succeeded and says so"
    assert status.upload_error and status.photos_pending == 1
    held = district.attachments.state(content_hash)
    assert held.received == 2 * CHUNK_BYTES and not held.complete

    cut.limit = None
    tap.clear()
    result = dev.sync()
    first = puts(tap)[0]
    assert offset_of(first) == 2 * CHUNK_BYTES > 0, "the second sync continues where the server stopped"
    assert result.uploads is not None and result.uploads.uploaded == 1 and result.uploads.error is None
    assert result.uploads.bytes_sent == len(photo) - 2 * CHUNK_BYTES
    assert on_server(district, content_hash) == photo
    assert dev.client.status.upload_error is None and dev.client.status.photos_pending == 0


def test_the_server_offset_wins_over_the_devices(district, make_device, live):
    """409 offset_mismatch: the device continues from ``received`` in the error."""
    tap = Tap(live)
    dev = make_device("w1", tap)
    photo = camera_photo(3)
    content_hash = add_report_with_photo(dev.store, photo)
    # The server already holds three chunks (another attempt that the device knows nothing of).
    for off in range(0, 3 * CHUNK_BYTES, CHUNK_BYTES):
        district.attachments.append(content_hash, off, photo[off:off + CHUNK_BYTES], len(photo))

    def stale_status(request: Request, response: Response, n: int) -> None:
        if request.path == STATUS:  # an answer from before those chunks arrived
            district.attachments.append(content_hash, 3 * CHUNK_BYTES, photo[3 * CHUNK_BYTES:4 * CHUNK_BYTES],
                                        len(photo))

    tap.after = stale_status
    dev.sync()
    offsets = [offset_of(r) for r in puts(tap)]
    assert offsets[0] == 3 * CHUNK_BYTES and offsets[1] == 4 * CHUNK_BYTES
    conflict = tap.exchanges[[e.request.method for e in tap.exchanges].index("PUT")]
    assert conflict.response is not None and conflict.response.status == 409
    assert on_server(district, content_hash) == photo


def test_a_corrupted_chunk_is_refused_at_the_end_and_sent_again(district, make_device, live):
    flip = FlipByte(live, which=2)
    tap = Tap(flip)
    dev = make_device("w1", tap)
    flip.identity = dev.identity
    photo = camera_photo(4)
    content_hash = add_report_with_photo(dev.store, photo)

    result = dev.sync()

    assert flip.flipped == [CHUNK_BYTES]
    answers = [(offset_of(e.request), e.response.status) for e in tap.exchanges
               if e.request.method == "PUT" and e.response is not None]
    n = -(-len(photo) // CHUNK_BYTES)
    assert answers[n - 1][1] == 422, "the whole was checked when its last byte arrived"
    assert all(status == 200 for _, status in answers[:n - 1])
    assert answers[n][0] == 0, "the device starts again from 0"
    assert result.uploads is not None and result.uploads.uploaded == 1 and result.uploads.error is None
    assert on_server(district, content_hash) == photo
    actions = audit_actions(district)
    assert ("device:" + dev.device_id, "attachment.hash_mismatch", f"attachment:{content_hash}") in actions


def test_damage_on_every_attempt_gives_up_for_this_sync_and_the_next_one_succeeds(district, make_device, live):
    flip = FlipByte(live, which=1, every=True)
    dev = make_device("w1", flip)
    flip.identity = dev.identity
    photo = normalised_photo(5)
    content_hash = add_report_with_photo(dev.store, photo)

    result = dev.sync()
    assert result.uploads is not None and result.uploads.pending == 1
    assert result.uploads.error is not None and "hash_mismatch" in result.uploads.error
    assert dev.client.status.last_error is None and dev.client.status.upload_error
    assert not district.attachments.state(content_hash).complete

    flip.identity = None  # the damaging link is gone
    result = dev.sync()
    assert result.uploads is not None and result.uploads.uploaded == 1
    assert on_server(district, content_hash) == photo


def test_duplicate_uploads_store_one_copy(district, make_device, live, server_attachments):
    photo = normalised_photo(6)
    lost = Tap(live)
    a = make_device("w1", lost)
    b = make_device("w2", live)
    h1 = add_report_with_photo(a.store, photo, n=1)
    h2 = add_report_with_photo(b.store, photo, n=2)
    assert h1 == h2

    def lose_the_last_answer(request: Request, response: Response, n: int) -> None:
        if request.method == "PUT" and response.status == 200 and b'"complete"' in response.body:
            raise NetworkError("the answer was lost after the server stored the photo")

    lost.after = lose_the_last_answer
    first = a.sync()
    assert first.uploads is not None and first.uploads.pending == 1  # the device does not know it went
    assert district.attachments.state(h1).complete

    second = b.sync()  # another device with the same photo: the server has it
    assert second.uploads is not None and second.uploads.uploaded == 1 and second.uploads.bytes_sent == 0

    lost.after = None
    lost.clear()
    third = a.sync()
    assert third.uploads is not None and third.uploads.uploaded == 1 and not puts(lost)
    assert a.store.attachments.state(h1).confirmed

    copies = [p for p in server_attachments.rglob("*") if p.is_file() and h1 in p.name]
    assert len(copies) == 1, copies
    assert on_server(district, h1) == photo


def test_records_referring_to_photos_the_server_cannot_see_yet_do_not_stop_the_others(district, make_device, live):
    tap = Tap(live)
    dev = make_device("w1", tap)
    good = add_report_with_photo(dev.store, normalised_photo(7), n=1)
    late: list[str] = []

    def save_during_the_sync(request: Request, n: int) -> None:
        if request.path == "/v1/pull" and not late:  # the worker saves another report meanwhile
            late.append(add_report_with_photo(dev.store, normalised_photo(8), n=2))

    tap.before = save_during_the_sync
    result = dev.sync()
    assert result.uploads is not None and result.uploads.uploaded == 1 and result.uploads.skipped == 1
    assert district.attachments.state(good).complete and not district.attachments.state(late[0]).complete
    statuses = [e for e in tap.to(STATUS)]
    assert statuses[0].response is not None and statuses[0].response.status == 403  # the batch, then one by one
    assert len(statuses) == 3

    tap.before = None
    result = dev.sync()
    assert result.uploads is not None and result.uploads.uploaded == 1 and result.uploads.pending == 0
    assert on_server(district, late[0]) == normalised_photo(8)


# -- download on demand ----------------------------------------------------------------------

def test_another_grid_cannot_download_it(district, make_device, live):
    owner = make_device("w1", live)
    content_hash = add_report_with_photo(owner.store, normalised_photo(9))
    owner.sync()
    stranger = make_device("w3", live)  # grid g2
    stranger.sync()
    with pytest.raises(RequestRejected) as err:
        stranger.client.download_attachment(content_hash)
    assert err.value.code == "out_of_scope" and err.value.status == 403
    assert not stranger.store.attachments.exists(content_hash)
    assert [p for p in stranger.store.attachments.folder.iterdir()] == []  # nothing partial left behind


def test_a_device_of_the_same_grid_downloads_it_on_demand(district, make_device, live):
    owner = make_device("w1", live)
    photo = camera_photo(10)  # more than one download range
    assert len(photo) > MAX_CHUNK_BYTES
    content_hash = add_report_with_photo(owner.store, photo)
    owner.client.sync()
    tap = Tap(live)
    colleague = make_device("w2", tap)
    colleague.sync()
    assert colleague.store.list("reports")[0]["attachments"] == [content_hash]
    assert not colleague.store.attachments.exists(content_hash), "photos come when they are opened"

    seen: list[SyncProgress] = []
    tap.clear()
    got = colleague.client.download_attachment(content_hash, progress=seen.append)

    assert got.hash == content_hash and got.size == len(photo)
    assert colleague.store.attachments.read(content_hash) == photo
    gets = [e.request for e in tap.exchanges if e.request.method == "GET"]
    assert len(gets) == -(-len(photo) // MAX_CHUNK_BYTES)
    assert seen[-1].phase == "downloading" and seen[-1].attachment_bytes == seen[-1].attachment_total == len(photo)
    state = colleague.store.attachments.state(content_hash)
    assert state is not None and state.origin == "downloaded" and state.confirmed
    tap.clear()
    colleague.client.download_attachment(content_hash)  # already here: no request
    assert tap.exchanges == []


def test_a_photo_not_uploaded_yet_is_pending(district, make_device, live):
    cut = CutAfter(live, limit=0)
    owner = make_device("w1", cut)
    content_hash = add_report_with_photo(owner.store, normalised_photo(11))
    owner.sync()  # the report arrives, its photo does not
    colleague = make_device("w2", live)
    colleague.sync()
    with pytest.raises(RequestRejected) as err:
        colleague.client.download_attachment(content_hash)
    assert err.value.code == "attachment_pending"
    assert not colleague.store.attachments.exists(content_hash)


def test_the_app_fetches_a_photo_off_the_ui_thread(district, make_device, live):
    """The inbox screen's download (terminal_app.services.capture.PhotoFetch), without Kivy."""
    owner = make_device("w1", live)
    photo = normalised_photo(12)
    uploaded = add_report_with_photo(owner.store, photo, n=1)
    cut = CutAfter(live, limit=0)
    owner.client.sync()
    pending_owner = make_device("w2", cut)
    not_yet = add_report_with_photo(pending_owner.store, normalised_photo(13), n=2)
    pending_owner.sync()
    colleague = make_device("w2", live)
    colleague.sync()

    fetch = PhotoFetch()
    done: dict[str, tuple[str | None, str]] = {}
    percents: list[int] = []
    finished = threading.Event()

    def on_done(h: str, problem: str | None, detail: str) -> None:
        done[h] = (problem, detail)
        if len(done) == 2:
            finished.set()

    def client() -> SyncClient:  # made on the download's thread, one per download, as the inbox does
        return SyncClient(colleague.store, live, retries=1, sleep=lambda s: None)

    for h in (uploaded, not_yet):
        assert fetch.start(client, h, on_progress=lambda h, p: percents.append(p), on_done=on_done)
    assert finished.wait(30)
    assert done[uploaded] == (None, "") and colleague.store.attachments.read(uploaded) == photo
    assert done[not_yet] == ("pending", "attachment_pending")
    assert percents and percents[-1] == 100
    assert not fetch.busy(uploaded)


# -- nothing in clear on a device --------------------------------------------------------------

def windows(data: bytes) -> set[bytes]:
    """Every aligned 64-byte run of ``data``: any copy of 128 bytes or more contains one."""
    return {data[i:i + WINDOW] for i in range(0, len(data) - WINDOW + 1, WINDOW)}


def found_in(paths: list[Path], runs: set[bytes]) -> list[str]:
    hits = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
        for f in files:
            data = f.read_bytes()
            if any(data[i:i + WINDOW] in runs for i in range(len(data) - WINDOW + 1)):
                hits.append(f.name)
    return hits


def device_files(store: Store) -> list[Path]:
    return [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm"), store.attachments.folder]


def test_no_plaintext_photo_on_either_device(district, make_device, live, tmp_path):
    owner = make_device("w1", live)
    photo = normalised_photo(14)
    content_hash = add_report_with_photo(owner.store, photo)
    owner.sync()
    colleague = make_device("w2", live)
    colleague.sync()
    colleague.client.download_attachment(content_hash)
    assert colleague.store.attachments.read(content_hash) == photo

    runs = windows(photo)
    for dev in (owner, colleague):
        assert found_in(device_files(dev.store), runs) == []
        raw = b"".join(p.read_bytes() for p in device_files(dev.store) if p.is_file())
        assert content_hash.encode() not in raw and bytes.fromhex(content_hash) not in raw
    # positive control: the same scan finds the photo in a plain copy, even a partial one
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "copy.bin").write_bytes(b"header" + photo[1000:1200] + b"trailer")
    assert found_in([plain], runs) == ["copy.bin"]


# -- the cache ---------------------------------------------------------------------------------

def test_the_cache_keeps_its_limit_and_never_evicts_unsent_local_photos(district, make_device, live):
    owner = make_device("w1", live)
    photos = [normalised_photo(20 + i) for i in range(4)]
    hashes = [add_report_with_photo(owner.store, p, n=i) for i, p in enumerate(photos)]
    owner.sync()

    cut = CutAfter(live)
    colleague = make_device("w2", cut)
    colleague.sync()
    clock = iter(range(1_000_000, 10_000_000, 1000))
    colleague.store.attachments.now_ms = lambda: next(clock)
    cut.limit = 0  # the colleague's own photo cannot be sent: it stays unconfirmed
    own = add_report_with_photo(colleague.store, normalised_photo(30), n=9)
    colleague.sync()
    cut.limit = None
    assert colleague.store.attachments.state(own).confirmed is False

    limit = len(photos[0]) + max(len(photos[1]), len(photos[2]))  # room for two of the first three
    colleague.store.attachments.cache_limit_bytes = limit
    for h in hashes[:2]:
        colleague.client.download_attachment(h)
    colleague.store.attachments.read(hashes[0])  # opened again: now the most recently used
    colleague.client.download_attachment(hashes[2])
    held = {h for h in hashes if colleague.store.attachments.exists(h)}
    assert held == {hashes[0], hashes[2]}, "the least recently used (hashes[1]) left"
    assert colleague.store.attachments.cache_bytes() <= limit
    assert colleague.store.attachments.exists(own)

    assert colleague.store.attachments.evict(0) == 2  # even with no room at all ...
    assert colleague.store.attachments.exists(own)  # ... the unsent photo stays
    assert colleague.store.attachments.read(own) == normalised_photo(30)
    assert colleague.store.attachments.cache_bytes() == 0

    # A photo too big for the cache is still kept while it is being shown.
    colleague.store.attachments.cache_limit_bytes = 10
    colleague.client.download_attachment(hashes[3])
    assert colleague.store.attachments.exists(hashes[3])

    # Once the server has the worker's own photo it is a cached copy like any other.
    colleague.store.attachments.cache_limit_bytes = 10**9
    colleague.sync()
    assert colleague.store.attachments.state(own).confirmed
    assert colleague.store.attachments.evict(0) == 2
    assert not colleague.store.attachments.exists(own) and not colleague.store.attachments.exists(hashes[3])
    colleague.client.download_attachment(own)  # and comes back on demand
    assert colleague.store.attachments.read(own) == normalised_photo(30)


# -- the app's sync bar ------------------------------------------------------------------------

def test_the_sync_bar_shows_photo_upload_progress(district, make_device, live):
    from terminal_app.driver import offscreen

    offscreen(quiet=True)  # Kivy is configured before its first import (a no-op when it already was)
    from terminal_app import i18n
    from terminal_app.widgets.syncbar import describe

    class App:
        lang = "zh"

        def t(self, key: str, **values: Any) -> str:
            return i18n.tr(key, self.lang, **values)

    i18n.load_catalog()
    app = App()
    cut = CutAfter(live)
    statuses: list[SyncStatus] = []
    dev = make_device("w1", cut, on_status=statuses.append)
    add_report_with_photo(dev.store, camera_photo(40))
    cut.limit = 3
    dev.sync()
    shown = [describe(app, s)[0] for s in statuses if s.phase == "uploading"]
    assert shown[0] == "正在上传照片 0%"
    assert "正在上传照片 12%" in shown or "正在上传照片 13%" in shown  # one chunk of about eight
    main, detail = describe(app, dev.client.status)
    assert main == "在线" and "1 张照片待上传" in detail and "照片未发出，下次同步继续" in detail
    app.lang = "en"
    assert "1 photos to send" in describe(app, dev.client.status)[1]

    cut.limit = None
    statuses.clear()
    dev.sync()
    assert [describe(app, s)[0] for s in statuses if s.phase == "uploading"][-1] == "Sending photos 100%"
    main, detail = describe(app, dev.client.status)
    assert main == "Online" and "photo" not in detail
