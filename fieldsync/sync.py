"""The sync client: push the outbox, then pull until caught up, repairing divergence.

::

    client = SyncClient(store)                       # HTTPS to the enrolled server
    result = client.sync(progress=print)             # SyncResult with counts and bytes
    client.status                                    # immutable SyncStatus for a UI

Network errors and 5xx answers are retried with exponential backoff and full
jitter; 4xx answers are not, except ``timestamp_stale``: the clock offset is
corrected from the server's time and the request re-signed, once.  A push is safe to repeat: the server applies each
outbox ``seq`` once.  Every page is validated before anything is applied.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .attachments import Attachment
from .errors import (
    DeviceRevokedError,
    NetworkError,
    ProtocolError,
    RequestRejected,
    ServerError,
    StoreError,
    SyncError,
)
from .identity import Identity, load_identity, new_key, public_key_b64, save_identity
from .protocol import (
    DEFAULT_PULL_LIMIT,
    H_SCHEMA,
    MAX_PULL_LIMIT,
    MAX_PUSH_CHANGES,
    N_BUCKETS,
    bucket_of,
    dumps,
    parse_pull_response,
    parse_pulled,
    parse_push_response,
)
from .schema import SCHEMA_VERSION
from .store import Store
from .transfer import UploadResult, download, pending_uploads, upload
from .transport import Request, RequestsTransport, Response, Transport

__all__ = ["SyncClient", "SyncStatus", "SyncProgress", "SyncResult", "UploadResult", "Enrollment", "enroll",
           "enrollment"]

_GZIP_OVER = 1024
log = logging.getLogger("fieldsync.sync")
REVERIFY_MS = 6 * 3600 * 1000  # a grid's full checksum scan runs at least this often


@dataclass(frozen=True)
class SyncProgress:
    phase: str  # pushing | pulling | repairing | uploading | downloading
    records: int  # records pushed or pulled so far in this sync (uploading: attachments sent)
    bytes_sent: int
    bytes_received: int
    attachment_bytes: int = 0  # uploading / downloading: attachment bytes moved so far
    attachment_total: int = 0  # ... of this many to move

    @property
    def fraction(self) -> float | None:
        """How far the attachment transfer is (0..1), or None outside one."""
        return min(1.0, self.attachment_bytes / self.attachment_total) if self.attachment_total else None


@dataclass(frozen=True)
class SyncStatus:
    """One immutable snapshot for a UI; a new one replaces it on every change."""

    online: bool = False
    phase: str = "idle"  # idle | pushing | pulling | repairing | uploading
    pending: int = 0
    last_synced_ms: int | None = None
    last_error: str | None = None
    rejections: int = 0
    conflicts: int = 0
    progress: SyncProgress | None = None
    photos_pending: int = 0  # attachments made here that the server does not hold yet
    upload_error: str | None = None  # why the last upload stopped (the record sync itself succeeded)


@dataclass(frozen=True)
class SyncResult:
    pushed: int = 0
    rejected: int = 0
    pulled: int = 0
    removed: int = 0
    repaired: int = 0
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    grids: list[str] = field(default_factory=list)
    uploads: UploadResult | None = None  # the attachment upload that followed the record sync


@dataclass(frozen=True)
class Enrollment:
    """Who this store's device is on its server (no key material)."""

    device_id: str
    worker_id: str
    server_url: str


def enrollment(store: Store) -> Enrollment | None:
    """This store's enrollment, or None if it has not enrolled yet."""
    identity = load_identity(store)
    if identity is None:
        return None
    return Enrollment(identity.device_id, identity.worker_id, identity.server_url)


def _default_transport(identity: Identity) -> Transport:
    return RequestsTransport(identity.server_url, ca_bundle=identity.ca_bundle)


def _encoded(payload: dict[str, Any] | bytes) -> tuple[bytes, dict[str, str]]:
    """A request's JSON body (gzipped when large) and its content headers."""
    body = payload if isinstance(payload, bytes) else dumps(payload)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip", H_SCHEMA: str(SCHEMA_VERSION)}
    if len(body) > _GZIP_OVER:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def _decode_json(resp: Response) -> Any:
    try:
        return json.loads(resp.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the server's answer is not valid JSON (status {resp.status})") from exc


def _error_of(resp: Response) -> tuple[str, str, dict[str, Any]]:
    try:
        err = json.loads(resp.body)["error"]
        return str(err["code"]), str(err["message"]), err
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"http_{resp.status}", f"the server answered {resp.status}", {}


def enroll(store: Store, server_url: str, code: str, *, device_name: str = "",
           transport: Transport | None = None, ca_bundle: str | None = None) -> Identity:
    """Enroll this store's device with a one-time code; keeps the new key in the store."""
    if load_identity(store) is not None:
        raise StoreError("this store is already enrolled; use a new store to enroll again")
    key = new_key()
    transport = transport or RequestsTransport(server_url, ca_bundle=ca_bundle)
    body = dumps({"code": code.strip(), "public_key": public_key_b64(key), "node_id": store.node_id,
                  "device_name": device_name, "schema_version": SCHEMA_VERSION})
    resp = transport.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json",
                                                                H_SCHEMA: str(SCHEMA_VERSION)}, body))
    if resp.status != 200:
        code_, message, _ = _error_of(resp)
        raise RequestRejected(code_, message, resp.status)
    data = _decode_json(resp)
    if not isinstance(data, dict) or not isinstance(data.get("device_id"), str) or not isinstance(data.get("worker_id"), str):
        raise ProtocolError("the enrollment answer lacks device_id / worker_id")
    identity = Identity(data["device_id"], data["worker_id"], server_url, key, ca_bundle)
    save_identity(store, identity)
    server_ms = data.get("server_time_ms")
    if isinstance(server_ms, int):
        store.set_clock_offset(server_ms - time.time_ns() // 1_000_000)
    return identity


class SyncClient:
    """Syncs one store with its district server through ``transport``."""

    def __init__(
        self,
        store: Store,
        transport: Transport | None = None,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        page_limit: int = DEFAULT_PULL_LIMIT,
        push_batch: int = 1000,
        on_status: Callable[[SyncStatus], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        identity = load_identity(store)
        if identity is None:
            raise StoreError("this store is not enrolled yet: run 'fieldsync enroll' first")
        self.store = store
        self.identity = identity
        self.transport = transport or _default_transport(identity)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.page_limit = max(1, min(page_limit, MAX_PULL_LIMIT))
        self.push_batch = max(1, min(push_batch, MAX_PUSH_CHANGES))
        self.on_status = on_status
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._status = SyncStatus(pending=store.outbox_size(), rejections=len(store.rejections()),
                                  conflicts=self._open_conflicts(),
                                  last_synced_ms=store.get_meta("last_synced_ms"),
                                  photos_pending=len(pending_uploads(store)))
        self._requests = self._sent = self._received = self._pulled_total = 0

    # -- status ------------------------------------------------------------------
    @property
    def status(self) -> SyncStatus:
        return self._status

    def _set_status(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        if self.on_status is not None:
            self.on_status(self._status)

    def _open_conflicts(self) -> int:
        return sum(1 for c in self.store.list("conflicts") if c.get("status", "open") == "open")

    # -- requests ----------------------------------------------------------------
    def _call(self, path: str, payload: dict[str, Any]) -> Any:
        """POST a signed JSON request with retries; returns the decoded answer."""
        return self._post(path, _encoded(payload))

    def _post(self, path: str, encoded: tuple[bytes, dict[str, str]]) -> Any:
        """POST a request body made by :func:`_encoded`; returns the decoded answer."""
        body, headers = encoded
        resp = self._exchange("POST", path, "", body, headers)
        if resp.status == 200:
            return _decode_json(resp)
        code, message, detail = _error_of(resp)
        raise RequestRejected(code, message, resp.status, detail)

    def _exchange(self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send one signed request (re-signed on every retry); returns the answer when it is
        not a 5xx.  Network errors and 5xx answers are retried with backoff, then raised;
        ``timestamp_stale`` corrects the clock once; ``device_revoked`` raises.  Other 4xx
        answers are returned for the caller to read (``fieldsync.transfer`` uses this for
        the raw-bytes attachment requests)."""
        attempt = 0
        resynced = False
        while True:
            signed = {**headers, **self.identity.sign(method, path, query, body, self.store.now_ms())}
            try:
                resp = self.transport.handle(Request(method, path, query, signed, body))
                self._requests += 1
                self._sent += len(body)
                self._received += resp.size_on_wire
                self._note_server_time(resp)
                if resp.status >= 500:
                    raise ServerError(f"the server failed ({resp.status})")
            except (NetworkError, ServerError) as exc:
                self._set_status(online=False, last_error=str(exc))
                if attempt >= self.retries:
                    raise
                delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
                self._sleep(self._rng.uniform(0, delay))
                attempt += 1
                continue
            if resp.status == 200:
                if not self._status.online:
                    self._set_status(online=True)
                return resp
            code, message, extra = _error_of(resp)
            if code == "timestamp_stale" and not resynced and isinstance(extra.get("server_time_ms"), int):
                self.store.set_clock_offset(extra["server_time_ms"] - time.time_ns() // 1_000_000)
                resynced = True
                continue
            if code == "device_revoked":
                raise DeviceRevokedError(message, bool(extra.get("wipe")))
            return resp

    def _note_server_time(self, resp: Response) -> None:
        text = resp.headers.get("x-fieldsync-server-time", "")
        if text.isdigit():
            offset = int(text) - time.time_ns() // 1_000_000
            if abs(offset - self.store.clock_offset_ms) > 2000:
                self.store.set_clock_offset(offset)

    def _progress(self, cb: Callable[[SyncProgress], None] | None, phase: str, records: int) -> None:
        p = SyncProgress(phase, records, self._sent, self._received)
        self._set_status(phase=phase, progress=p)
        if cb is not None:
            cb(p)

    # -- the sync ------------------------------------------------------------------
    def sync(self, progress: Callable[[SyncProgress], None] | None = None) -> SyncResult:
        """Push everything pending, then pull until caught up.  Raises SyncError subclasses."""
        start = time.monotonic()
        self._requests = self._sent = self._received = 0
        self._pulled_total = 0
        try:
            pushed, rejected, revoked = self._push(progress)
            if revoked is not None:
                raise revoked
            pulled, removed, repaired = self._pull(progress)
        except DeviceRevokedError as exc:
            self._revoked(exc)
            raise
        except Exception as exc:
            self._set_status(phase="idle", progress=None, last_error=str(exc), pending=self.store.outbox_size())
            raise
        now = self.store.now_ms()
        self.store.set_meta("last_synced_ms", now)
        self._set_status(online=True, last_error=None, last_synced_ms=now)
        uploads = self.upload_attachments(progress)  # never fails the sync: its errors are its own
        self._set_status(online=True, phase="idle", progress=None, last_error=None, last_synced_ms=now,
                         pending=self.store.outbox_size(), rejections=len(self.store.rejections()),
                         conflicts=self._open_conflicts())
        return SyncResult(pushed, rejected, pulled, removed, repaired, self._requests, self._sent,
                          self._received, time.monotonic() - start, self.store.grids(), uploads)

    # -- attachments (protocol §16) ------------------------------------------------
    def upload_attachments(self, progress: Callable[[SyncProgress], None] | None = None) -> UploadResult:
        """Send the attachments this device's records refer to that the server lacks, resuming
        each from the offset the server reports.  Run by :meth:`sync` after the records.

        Never raises for a network or server failure: the upload stops, the
        error is in the result and in ``status.upload_error``, and the next
        call resumes.  ``progress`` sees phase ``uploading`` with byte counts.
        """
        result = upload(self, progress)
        self._set_status(phase="idle", progress=None, photos_pending=result.pending, upload_error=result.error)
        return result

    def download_attachment(self, content_hash: str,
                            progress: Callable[[SyncProgress], None] | None = None) -> Attachment:
        """Fetch an attachment this device does not hold (in ranges, streaming into the
        encrypted store, SHA-256 checked at the end), then trim the cache to its limit.

        Returns at once when it is already here.  Raises :class:`RequestRejected`
        (``attachment_pending``: not uploaded yet; ``out_of_scope``), :class:`NetworkError`,
        :class:`ServerError`, or :class:`IntegrityError` when what arrived does not match the hash.
        """
        return download(self, content_hash, progress)

    def _revoked(self, exc: DeviceRevokedError) -> None:
        """The server revoked this device: after the final push and the final photo uploads
        (allowed during the server's grace period), erase the store if asked."""
        self._set_status(online=True, phase="idle", progress=None, last_error=str(exc))
        try:
            upload(self, None)  # what cannot be sent now is lost with the erase
        except SyncError:  # e.g. the grace period is over: device_revoked again
            pass
        if exc.wipe:
            self.store.erase()

    def _push(self, progress: Callable[[SyncProgress], None] | None) -> tuple[int, int, DeviceRevokedError | None]:
        pushed = rejected = 0
        # While the server works on one batch, the next is read, decrypted and encoded here:
        # the outbox only grows at its end and only an answer removes entries, so the next
        # batch is the entries after this one's last seq, unless the server acknowledged less.
        renumbered = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldsync-push") as pool:
            batch = self._push_batch(0)
            while batch is not None:
                seqs, encoded = batch
                first, last = seqs[0], seqs[-1]
                self._set_status(phase="pushing", pending=self.store.outbox_size())
                upcoming = pool.submit(self._push_batch, last)
                try:
                    data = self._post("/v1/push", encoded)
                except RequestRejected as exc:
                    if exc.code != "outbox_behind" or renumbered:
                        raise
                    wait([upcoming])  # nothing reads the outbox while it is renumbered
                    self._renumber_outbox(exc)
                    renumbered = True
                    batch = self._push_batch(0)
                    continue
                answer = parse_push_response(data, last)
                if answer.acked_seq < first:
                    raise ProtocolError(f"the server acknowledged nothing of seq {first}..{last}")
                self.store.apply_push_result(answer.acked_seq, answer.rejections)
                pushed += sum(1 for seq in seqs if seq <= answer.acked_seq)
                rejected += len({r.seq for r in answer.rejections})
                self._progress(progress, "pushing", pushed)
                revoked = data.get("revoked") if isinstance(data, dict) else None
                if isinstance(revoked, dict):
                    if self.store.outbox_size() == 0 or answer.acked_seq < last:
                        return pushed, rejected, DeviceRevokedError("this device was revoked by the command centre",
                                                                    bool(revoked.get("wipe")))
                batch = upcoming.result()
                if answer.acked_seq < last:
                    batch = self._push_batch(0)  # the rest of this batch goes again, first
        return pushed, rejected, None

    def _push_batch(self, after_seq: int) -> tuple[list[int], tuple[bytes, dict[str, str]]] | None:
        """The next pending changes after ``after_seq`` as a push request body, or None."""
        changes = self.store.outbox_changes(limit=self.push_batch, after=after_seq)
        if not changes:
            return None
        body = b'{"schema_version":%d,"confirmed_seq":%d,"changes":[%b]}' % (
            SCHEMA_VERSION, self.store.push_confirmed(), b",".join(c for _, c in changes))
        return [seq for seq, _ in changes], _encoded(body)

    def _renumber_outbox(self, exc: RequestRejected) -> None:
        """The server says this store's outbox is behind its record of the device (the store was
        restored from an older copy): number the pending changes after the server's ``last_seq``."""
        server_last = exc.detail.get("last_seq")
        if isinstance(server_last, bool) or not isinstance(server_last, int) or server_last < 0:
            raise ProtocolError("an outbox_behind answer needs the server's last_seq") from exc
        moved = self.store.renumber_outbox(server_last)
        log.warning("the outbox was behind the server's record of this device (a store restored from an older "
                    "copy?): %d pending changes renumbered after seq %d and pushed again", moved, server_last)

    def _pull(self, progress: Callable[[SyncProgress], None] | None) -> tuple[int, int, int]:
        pulled = removed = repaired = 0
        self._set_status(phase="pulling")
        cursors = self.store.cursors()
        sent = {g: cursors.get(g, 0) for g in set(cursors) | set(self.store.grids())}
        # While one page is applied, the next is already on its way: a page's
        # answer carries the cursors the next request needs, so the server and
        # this device work at the same time instead of in turn.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldsync-pull") as pool:
            future = pool.submit(self._fetch_page, sent)
            while True:
                data, sent = future.result()
                page = parse_pull_response(data, sent, self.page_limit)
                if page.more:
                    future = pool.submit(self._fetch_page, {g: page.cursors.get(g, 0) for g in page.grids})
                applied = self._apply_page(page, progress)
                pulled, removed, repaired = pulled + applied[0], removed + applied[1], repaired + applied[2]
                if not page.more:
                    return pulled, removed, repaired

    def _fetch_page(self, sent: dict[str, int]) -> tuple[Any, dict[str, int]]:
        return self._call("/v1/pull", {"schema_version": SCHEMA_VERSION, "cursors": sent, "snapshots": True,
                                       "limit": self.page_limit}), sent

    def _apply_page(self, page: Any, progress: Callable[[SyncProgress], None] | None) -> tuple[int, int, int]:
        """Apply one page, then check (and repair) the grids it caught up on."""
        repaired = 0
        result = self.store.apply_pull(page)
        self._pulled_total += result.applied
        self._progress(progress, "pulling", self._pulled_total)
        stale = self.store.stale_buckets() if not page.more else {}
        for grid in sorted(set(page.checksums) | set(stale)):
            forced = stale.get(grid, set())
            expected = page.checksums.get(grid)
            if not forced and expected is not None and self._verified(grid, page.cursors[grid], expected):
                continue
            repaired += self._repair(grid, forced, progress)
            if expected is not None:
                self._verified(grid, page.cursors[grid], expected)
        return result.applied, result.removed, repaired

    def wait_for_changes(self, timeout_s: float = 25.0) -> list[str]:
        """Long-poll the server: the grids that changed after this device's cursors.

        Returns as soon as something changed, or an empty list after
        ``timeout_s`` (at most 30).  Raises SyncError subclasses like sync().
        """
        cursors = self.store.cursors()
        sent = {g: cursors.get(g, 0) for g in set(cursors) | set(self.store.grids())}
        data = self._call("/v1/wait", {"schema_version": SCHEMA_VERSION, "cursors": sent,
                                       "timeout_ms": int(max(0.0, min(timeout_s, 30.0)) * 1000)})
        changed = data.get("changed") if isinstance(data, dict) else None
        if not isinstance(changed, list) or not all(isinstance(g, str) for g in changed):
            raise ProtocolError("the wait answer lacks a list of changed grids")
        return changed

    def _verified(self, grid: str, cursor: int, expected: int) -> bool:
        """True when this device's copy of ``grid`` matches the server's checksum at ``cursor``.

        A match is remembered for :data:`REVERIFY_MS`, so a no-op sync does not
        rescan the grid and its cost does not grow with the records held; a
        full rescan still runs at least that often, which catches local damage
        even when nothing changes on the server.
        """
        key = f"verified:{grid}"
        now = self.store.now_ms()
        mark = self.store.get_meta(key)
        if isinstance(mark, str):
            parts = mark.split(":")
            if len(parts) == 3 and parts[0] == str(cursor) and parts[1] == str(expected) \
                    and now - int(parts[2]) < REVERIFY_MS:
                return True
        if self.store.grid_checksum(grid) != expected:
            return False
        self.store.set_meta(key, f"{cursor}:{expected}:{now}")
        return True

    def _repair(self, grid: str, forced: set[int], progress: Callable[[SyncProgress], None] | None) -> int:
        """Fetch only the buckets of ``grid`` that differ from the server's (plus ``forced``
        ones); unsynced local changes are kept."""
        self._set_status(phase="repairing")
        data = self._call("/v1/buckets", {"grid": grid})
        theirs = data.get("buckets") if isinstance(data, dict) else None
        if not isinstance(theirs, list) or len(theirs) != N_BUCKETS or not all(isinstance(b, int) for b in theirs):
            raise ProtocolError("bucket digests must be a list of integers")
        mine = self.store.bucket_digests(grid)
        diff = sorted({i for i in range(N_BUCKETS) if mine[i] != theirs[i]} | forced)
        if not diff:
            return 0
        data = self._call("/v1/repair", {"grid": grid, "buckets": diff})
        raw = data.get("records") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ProtocolError("repair answer lacks records")
        records = [parse_pulled(r) for r in raw]
        if any(r.grid != grid or r.left or bucket_of(r.collection, r.id) not in diff for r in records):
            raise ProtocolError(f"repair answer holds records outside the asked buckets of grid {grid!r}")
        adopted, dropped = self.store.apply_repair(grid, set(diff), records)
        self._progress(progress, "repairing", adopted)
        return adopted + dropped
