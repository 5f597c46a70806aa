"""Taking a photo and a location for an incident report.  No Kivy here.

Where a photo comes from depends on the platform: on Android (and iOS) the
camera through plyer, elsewhere a file chooser the screen provides.  The
screen passes ``kivy.utils.platform`` in, so this module can be tested with
fakes.  A chosen photo is checked, normalised (``fieldsync.photos.normalise``:
upright, longest edge 1600 px, JPEG quality 80, no EXIF/GPS), encrypted into
the store (``store.attachments.add``) and referred to by the content hash of
the normalised bytes; a camera file written by us is deleted once it is
encrypted, so no plaintext photo stays on the tablet.  Thumbnails are made in
memory.

Location: GPS through plyer where there is one (Android), otherwise (and
whenever there is no fix, as in a basement) the place the worker types.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fieldsync
from fieldsync import Store
from fieldsync.photos import DEFAULT_MAX_EDGE, DEFAULT_QUALITY, NotAPhotoError, PhotosUnavailable, normalise

__all__ = [
    "PHOTO_FILTERS", "MAX_PHOTO_BYTES", "PhotoError", "photo_source", "photo_kind", "pick_photo",
    "take_picture", "store_photo", "discard_photo", "thumbnail", "camera_folder", "discard_leftovers", "start_folder",
    "PhotoFetch", "fetch_photo",
    "GpsFix", "LocationSource", "location_value",
]

log = logging.getLogger("terminal_app.capture")

# For kivy's FileChooser: fnmatch is case-sensitive on Linux and cameras write IMG_0001.JPG.
PHOTO_FILTERS = ("*.jpg", "*.jpeg", "*.png", "*.JPG", "*.JPEG", "*.PNG")
MAX_PHOTO_BYTES = 25 * 1024 * 1024
CAMERA_PLATFORMS = ("android", "ios")
GPS_PLATFORMS = ("android", "ios")

OnChosen = Callable[[str | None, bool], None]  # (path or None if cancelled, owned: delete after storing)


class PhotoError(Exception):
    """A chosen file cannot be used as a photo; ``code`` names why (for the message catalog)."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


# -- photos ---------------------------------------------------------------------
def photo_source(platform: str) -> str:
    """``"camera"`` where the tablet has one reachable through plyer, else ``"files"``."""
    return "camera" if platform in CAMERA_PLATFORMS else "files"


def photo_kind(head: bytes) -> str | None:
    """``"jpg"`` or ``"png"`` from a file's first bytes, None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def camera_folder(data_dir: str | os.PathLike[str]) -> Path:
    """Where the camera writes a photo until it is encrypted (inside the app's private data folder)."""
    return Path(data_dir) / "camera"


def start_folder() -> str:
    """Where the desktop file chooser opens: the pictures folder if there is one."""
    home = Path.home()
    for name in ("Pictures", "图片", "Bilder"):
        if (home / name).is_dir():
            return str(home / name)
    return str(home)


def take_picture(data_dir: str | os.PathLike[str], on_chosen: OnChosen, camera: Any = None) -> Path:
    """Start the camera; ``on_chosen(path, True)`` follows (``(None, True)`` if cancelled).

    ``on_chosen`` may be called on another thread (Android's activity result);
    the caller moves it to the UI thread.  ``camera`` defaults to ``plyer.camera``.
    """
    folder = camera_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"photo-{uuid.uuid4().hex}.jpg"
    if camera is None:
        from plyer import camera as plyer_camera

        camera = plyer_camera

    def complete(filename: str) -> bool:
        path = Path(filename)
        ok = path.is_file() and path.stat().st_size > 0
        on_chosen(str(path) if ok else None, True)
        return False  # keep the file: store_photo removes it once it is encrypted

    camera.take_picture(filename=str(target), on_complete=complete)
    return target


def pick_photo(platform: str, *, on_chosen: OnChosen, open_chooser: Callable[[OnChosen], None],
               data_dir: str | os.PathLike[str], camera: Any = None) -> str:
    """Start choosing a photo the way this platform does; returns ``"camera"`` or ``"files"``.

    On a camera platform the camera is started (see :func:`take_picture`);
    if it cannot start, the file chooser is opened instead.
    """
    if photo_source(platform) == "camera":
        try:
            take_picture(data_dir, on_chosen, camera)
            return "camera"
        except (NotImplementedError, ImportError, OSError) as exc:
            log.error("camera not available (%s); opening the file chooser", type(exc).__name__)
    open_chooser(on_chosen)
    return "files"


def store_photo(store: Store, path: str | os.PathLike[str], owned: bool = False, *,
                max_edge: int = DEFAULT_MAX_EDGE, quality: int = DEFAULT_QUALITY) -> str:
    """Normalise the photo at ``path`` and encrypt it into the store; returns its content hash.

    What is stored (and later sent) is the normalised JPEG: a 4–8 MB phone
    photo becomes a few hundred KB, upright, without its EXIF (GPS
    included).  Raises :class:`PhotoError` (``missing``, ``not_a_photo``,
    ``too_big``, ``unreadable``).  When ``owned`` (a camera file of ours) the
    plaintext file is deleted afterwards, whatever happened.
    """
    p = Path(path)
    try:
        try:
            size = p.stat().st_size
            with open(p, "rb") as fh:
                head = fh.read(16)
        except FileNotFoundError as exc:
            raise PhotoError("missing", p.name) from exc
        except OSError as exc:
            raise PhotoError("unreadable", exc.strerror or type(exc).__name__) from exc
        if photo_kind(head) is None:
            raise PhotoError("not_a_photo", p.name)
        if size > MAX_PHOTO_BYTES:
            raise PhotoError("too_big", str(size // (1024 * 1024)))
        try:
            small = normalise(p, max_edge=max_edge, quality=quality)
        except NotAPhotoError as exc:
            raise PhotoError("not_a_photo", p.name) from exc
        except PhotosUnavailable as exc:
            raise PhotoError("unreadable", "pip install fieldsync[photos]") from exc
        except OSError as exc:
            raise PhotoError("unreadable", exc.strerror or type(exc).__name__) from exc
        return store.attachments.add(io.BytesIO(small)).hash
    finally:
        if owned:
            p.unlink(missing_ok=True)


def discard_photo(store: Store, content_hash: str) -> bool:
    """Remove a photo the worker took back, unless a saved report or visit refers to it; True if removed."""
    if any(content_hash in (r.get("attachments") or ()) for kind in ("reports", "visits") for r in store.list(kind)):
        return False
    store.attachments.remove(content_hash)
    return True


class PhotoFetch:
    """Downloads of photos this tablet does not hold (a report's photo from the server), one
    background thread each, never two for the same photo.  No Kivy: the screen wraps the
    callbacks so they run on the UI thread."""

    def __init__(self) -> None:
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def busy(self, content_hash: str) -> bool:
        with self._lock:
            return content_hash in self._running

    def start(self, client: Callable[[], Any], content_hash: str, *,
              on_progress: Callable[[str, int], None], on_done: Callable[[str, str | None, str], None]) -> bool:
        """Fetch ``content_hash`` with ``client()`` (a SyncClient, made on the thread); False if already running.

        ``on_progress(hash, percent)`` follows the ranges; ``on_done(hash, problem, detail)``
        ends it: ``problem`` is None when the photo is in the store, ``"pending"`` when the
        server does not have it yet, ``"failed"`` otherwise (``detail`` says why, no personal data).
        """
        with self._lock:
            if content_hash in self._running:
                return False
            self._running.add(content_hash)

        def run() -> None:
            problem: str | None = None
            detail = ""
            try:
                sync_client = client()
                if sync_client is None:
                    raise fieldsync.StoreError("the tablet is locked")
                sync_client.download_attachment(content_hash, progress=lambda p: on_progress(
                    content_hash, int(100 * (p.fraction or 0.0))))
            except fieldsync.RequestRejected as exc:
                problem, detail = ("pending" if exc.code == "attachment_pending" else "failed"), exc.code
            except Exception as exc:  # noqa: BLE001 - shown to the worker; the thread must end cleanly
                problem, detail = "failed", str(exc)[:80] if isinstance(exc, fieldsync.FieldsyncError) \
                    else type(exc).__name__
            finally:
                with self._lock:
                    self._running.discard(content_hash)
            on_done(content_hash, problem, detail)

        threading.Thread(target=run, name="fieldsync-photo", daemon=True).start()
        return True


def fetch_photo(fetcher: PhotoFetch, store: Store, client: Callable[[], Any], content_hash: str, *,
                on_progress: Callable[[str, int], None], on_done: Callable[[str, str | None, str], None]) -> str:
    """The photo ``content_hash`` for a screen: ``"here"`` when the store holds it, else
    ``"fetching"`` (a download started now or earlier; ``on_done`` follows)."""
    if store.attachments.exists(content_hash):
        return "here"
    fetcher.start(client, content_hash, on_progress=on_progress, on_done=on_done)
    return "fetching"


def thumbnail(data: bytes, max_px: int = 480) -> tuple[bytes, str]:
    """A small copy of a photo, made in memory: ``(bytes, "jpg" | "png")``.

    Camera photos can be larger than a tablet's biggest texture, and are often
    stored sideways with an EXIF orientation; Pillow fixes both.  Without
    Pillow the photo itself is returned.  Raises :class:`PhotoError`
    (``not_a_photo``) for anything that is not a JPEG or PNG.
    """
    kind = photo_kind(data[:16])
    if kind is None:
        raise PhotoError("not_a_photo")
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return data, kind
    try:
        with Image.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened)
            upright.thumbnail((max_px, max_px))
            if upright.mode not in ("RGB", "L"):
                upright = upright.convert("RGB")
            out = io.BytesIO()
            upright.save(out, "JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PhotoError("not_a_photo", type(exc).__name__) from exc
    return out.getvalue(), "jpg"


def discard_leftovers(data_dir: str | os.PathLike[str], older_than_s: float = 600,
                      now: Callable[[], float] = time.time) -> int:
    """Delete camera files left behind (the app was killed before encrypting them); returns the count."""
    folder = camera_folder(data_dir)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        try:
            if p.is_file() and now() - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            continue
    return n


# -- location -------------------------------------------------------------------
@dataclass(frozen=True)
class GpsFix:
    lat: float
    lon: float
    accuracy: float | None = None  # metres

    def as_location(self) -> dict[str, Any]:
        loc: dict[str, Any] = {"lat": round(self.lat, 6), "lon": round(self.lon, 6)}
        if self.accuracy is not None:
            loc["accuracy"] = round(self.accuracy)
        return loc


def location_value(fix: GpsFix | None, typed: str) -> dict[str, Any] | str | None:
    """The report's ``location``: the GPS fix (with the typed place as ``place``), or the typed text."""
    typed = typed.strip()
    if fix is not None:
        loc = fix.as_location()
        if typed:
            loc["place"] = typed
        return loc
    return typed or None


class LocationSource:
    """GPS through plyer on platforms that have it; elsewhere :attr:`available` is False.

    ``on_fix(GpsFix)`` and ``on_problem(code)`` may be called on another
    thread; the caller moves them to the UI thread.  ``gps`` defaults to
    ``plyer.gps``; ``request_permission(callback)`` to Android's runtime
    permission request.
    """

    def __init__(self, platform: str, gps: Any = None,
                 request_permission: Callable[[Callable[[bool], None]], None] | None = None) -> None:
        self.platform = platform
        self._gps = gps
        self._request_permission = request_permission
        self.running = False

    @property
    def available(self) -> bool:
        return self.platform in GPS_PLATFORMS or self._gps is not None

    def start(self, on_fix: Callable[[GpsFix], None], on_problem: Callable[[str], None]) -> bool:
        """Ask for location updates; False when this platform has no GPS."""
        if not self.available:
            return False

        def go(granted: bool) -> None:
            if not granted:
                on_problem("permission")
                return
            try:
                gps = self._gps
                if gps is None:
                    from plyer import gps as plyer_gps

                    gps = self._gps = plyer_gps

                def located(**kw: Any) -> None:
                    if isinstance(kw.get("lat"), (int, float)) and isinstance(kw.get("lon"), (int, float)):
                        acc = kw.get("accuracy")
                        on_fix(GpsFix(float(kw["lat"]), float(kw["lon"]),
                                      float(acc) if isinstance(acc, (int, float)) else None))

                def status(kind: str, value: Any) -> None:
                    if kind == "provider-disabled":
                        on_problem("disabled")

                gps.configure(on_location=located, on_status=status)
                gps.start(minTime=1000, minDistance=1)
                self.running = True
            except Exception as exc:  # noqa: BLE001 - no GPS is an ordinary situation: type the place
                log.error("GPS could not start: %s", type(exc).__name__)
                on_problem("unavailable")

        request = self._request_permission or (
            _android_location_permission if self.platform == "android" else lambda cb: cb(True))
        request(go)
        return True

    def stop(self) -> None:
        if self.running and self._gps is not None:
            try:
                self._gps.stop()
            except Exception as exc:  # noqa: BLE001
                log.error("GPS could not stop: %s", type(exc).__name__)
        self.running = False


def _android_location_permission(callback: Callable[[bool], None]) -> None:  # pragma: no cover - Android only
    try:
        from android.permissions import Permission, request_permissions  # type: ignore[import-not-found]
    except ImportError:
        callback(True)
        return

    def answered(permissions: list[str], grants: list[bool]) -> None:
        callback(any(grants))

    request_permissions([Permission.ACCESS_FINE_LOCATION, Permission.ACCESS_COARSE_LOCATION], answered)
