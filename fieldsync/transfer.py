"""Moving attachments between the device and its server (protocol §16).

* :func:`upload` runs after a record sync (``SyncClient.upload_attachments``):
  it asks ``POST /v1/attachments/status`` about the attachments this device's
  records refer to that the server has not confirmed, and sends the rest with
  ``PUT /v1/attachments/{hash}?offset=N`` in :data:`CHUNK_BYTES` pieces from
  the offset the server reports.  The plaintext is decrypted from the store as
  it is sent and never written anywhere.  A network failure stops the pass
  quietly (the next sync resumes from the server's offset); an attachment the
  server refuses is skipped and named in the result's ``error``.
* :func:`download` (``SyncClient.download_attachment``) fetches one attachment
  with ``GET /v1/attachments/{hash}?offset=N&length=M`` in ranges of up to
  1 MiB, streaming them into the encrypted store, which checks the SHA-256
  before anything becomes visible.

Both go through ``SyncClient._exchange``: signed (method, path, query, body),
re-signed and retried like every other request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .attachments import Attachment, AttachmentStore
from .errors import IntegrityError, NetworkError, ProtocolError, RecordNotFound, RequestRejected, ServerError
from .protocol import CHUNK_BYTES, H_SCHEMA, MAX_ATTACHMENT_BYTES, MAX_CHUNK_BYTES
from .schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from .store import Store
    from .sync import SyncClient, SyncProgress
    from .transport import Response

__all__ = ["UploadResult", "upload", "download", "pending_uploads", "H_ATTACHMENT_SIZE", "STATUS_BATCH"]

H_ATTACHMENT_SIZE = "X-Fieldsync-Attachment-Size"
STATUS_BATCH = 100  # most hashes in one status request
_HASH = re.compile(r"[0-9a-f]{64}")
_STATES = ("missing", "partial", "complete")
_MAX_OFFSET_JUMPS = 5  # offset_mismatch answers in a row before giving an attachment up for this pass

Progress = Callable[["SyncProgress"], None]


@dataclass(frozen=True)
class UploadResult:
    """What one upload pass did."""

    uploaded: int = 0  # attachments the server confirmed complete in this pass (sent now or already there)
    bytes_sent: int = 0  # attachment bytes sent in PUT bodies
    pending: int = 0  # attachments still not confirmed after the pass
    skipped: int = 0  # attachments the server refused this time (the rest went on)
    error: str | None = None  # the first problem met, None when everything went


class _Stopped(Exception):
    """One attachment cannot go in this pass (the others may)."""


def pending_uploads(store: "Store") -> list[str]:
    """Content hashes this device's records refer to, held here and not yet confirmed by the server.

    Cheap when there is nothing to send: the records are read only if the
    store holds an unconfirmed attachment at all.
    """
    attachments = store.attachments
    if attachments.unconfirmed_count() == 0:
        return []
    out: list[str] = []
    seen: set[str] = set()
    for name in store.registry.names():
        if "attachments" not in store.registry.get(name).fields:
            continue
        for record in store.list(name):
            refs = record.get("attachments")
            for h in refs if isinstance(refs, list) else ():
                if isinstance(h, str) and _HASH.fullmatch(h) and h not in seen:
                    seen.add(h)
                    state = attachments.state(h)
                    if state is not None and not state.confirmed:
                        out.append(h)
    return out


def _error(resp: "Response") -> tuple[str, str, dict[str, Any]]:
    try:
        err = json.loads(resp.body)["error"]
        return str(err["code"]), str(err["message"]), err
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"http_{resp.status}", f"the server answered {resp.status}", {}


def _json(resp: "Response") -> Any:
    try:
        return json.loads(resp.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the server's answer is not valid JSON (status {resp.status})") from exc


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class _Plaintext:
    """An attachment's plaintext from any offset, decrypted as it is read (kept only in memory)."""

    def __init__(self, attachments: AttachmentStore, content_hash: str) -> None:
        self._attachments = attachments
        self._hash = content_hash
        self._chunks: Iterator[bytes] | None = None
        self._buf = bytearray()
        self._start = 0  # offset of _buf[0] in the attachment

    def read_at(self, offset: int, n: int) -> bytes:
        if self._chunks is None or offset < self._start:
            self._chunks = self._attachments.chunks(self._hash, touch=False)
            self._buf, self._start = bytearray(), 0
        while self._start + len(self._buf) <= offset:
            self._start += len(self._buf)
            self._buf = bytearray(next(self._chunks, b""))
            if not self._buf:
                break
        del self._buf[:max(0, offset - self._start)]
        self._start = offset
        while len(self._buf) < n:
            piece = next(self._chunks, None)
            if piece is None:
                break
            self._buf += piece
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._start += len(out)
        return out


class _Upload:
    def __init__(self, client: "SyncClient", progress: Progress | None) -> None:
        self.client = client
        self.store = client.store
        self.progress = progress
        self.done_files = 0
        self.done_bytes = 0
        self.total_bytes = 0
        self.sent = 0
        self.skipped = 0
        self.error: str | None = None

    def note(self, problem: str) -> None:
        self.skipped += 1
        self.error = self.error or problem

    def emit(self) -> None:
        from .sync import SyncProgress  # a cycle at import time: sync imports this module

        c = self.client
        p = SyncProgress("uploading", self.done_files, c._sent, c._received, self.done_bytes, self.total_bytes)
        c._set_status(phase="uploading", progress=p)
        if self.progress is not None:
            self.progress(p)

    # -- status --------------------------------------------------------------------
    def status(self, hashes: list[str]) -> dict[str, tuple[str, int, int | None]]:
        """hash -> (state, received, size) for the hashes the server lets this device ask about."""
        out: dict[str, tuple[str, int, int | None]] = {}
        for i in range(0, len(hashes), STATUS_BATCH):
            batch = hashes[i:i + STATUS_BATCH]
            try:
                out.update(self._status(batch))
            except RequestRejected as exc:
                if exc.code != "out_of_scope":
                    raise
                # One hash the server does not (yet) see a record for spoils the batch: ask one by one.
                for h in batch:
                    try:
                        out.update(self._status([h]))
                    except RequestRejected as single:
                        if single.code != "out_of_scope":
                            raise
                        self.note(f"the server does not accept attachment {h[:12]} yet ({single.code})")
        return out

    def _status(self, batch: list[str]) -> dict[str, tuple[str, int, int | None]]:
        data = self.client._call("/v1/attachments/status", {"schema_version": SCHEMA_VERSION, "hashes": batch})
        entries = data.get("attachments") if isinstance(data, dict) else None
        if not isinstance(entries, list) or len(entries) != len(batch):
            raise ProtocolError("the attachment status answer must list every hash asked about")
        out = {}
        for h, entry in zip(batch, entries):
            if not isinstance(entry, dict) or entry.get("hash") != h or entry.get("state") not in _STATES:
                raise ProtocolError("the attachment status answer does not match the hashes asked about")
            received, size = _int(entry.get("received")), entry.get("size")
            if received is None or (size is not None and (_int(size) is None or received > size)):
                raise ProtocolError(f"attachment status of {h[:12]} has impossible byte counts")
            out[h] = (str(entry["state"]), received, size)
        return out

    # -- sending -------------------------------------------------------------------
    def send(self, content_hash: str, offset: int, size: int) -> None:
        """PUT the attachment from ``offset`` until the server says complete; raises _Stopped."""
        plain = _Plaintext(self.store.attachments, content_hash)
        path = f"/v1/attachments/{content_hash}"
        headers = {"Content-Type": "application/octet-stream", H_ATTACHMENT_SIZE: str(size),
                   H_SCHEMA: str(SCHEMA_VERSION)}
        restarted = False
        jumps = 0
        base = self.done_bytes
        while True:
            try:
                body = plain.read_at(offset, CHUNK_BYTES)
            except (IntegrityError, RecordNotFound) as exc:
                raise _Stopped(f"attachment {content_hash[:12]} cannot be read here: {exc}") from exc
            resp = self.client._exchange("PUT", path, f"offset={offset}", body, headers)
            self.sent += len(body)
            if resp.status == 200:
                data = _json(resp)
                state = data.get("state") if isinstance(data, dict) else None
                received = _int(data.get("received")) if isinstance(data, dict) else None
                if state not in ("partial", "complete") or received is None or received > size:
                    raise ProtocolError(f"the answer to an upload of {content_hash[:12]} is malformed")
                self.done_bytes += max(0, received - offset)
                if state == "complete":
                    self.store.attachments.confirm(content_hash)
                    self.done_files += 1
                    self.emit()
                    return
                jumps = 0 if received > offset else jumps + 1
                offset = received
            else:
                code, message, extra = _error(resp)
                received = _int(extra.get("received"))
                if code == "offset_mismatch" and received is not None and received <= size:
                    jumps += 1
                    offset = received  # the server's count is the truth: continue from there
                elif code == "hash_mismatch" and not restarted:
                    restarted = True  # a chunk was damaged on the way; the server dropped it all
                    self.total_bytes += self.done_bytes - base  # those bytes go again
                    offset = 0
                else:
                    raise _Stopped(f"the server refused attachment {content_hash[:12]}: {code} ({message})")
            if jumps > _MAX_OFFSET_JUMPS:
                raise _Stopped(f"the upload of attachment {content_hash[:12]} does not advance")
            self.emit()


def upload(client: "SyncClient", progress: Progress | None = None) -> UploadResult:
    """One upload pass (see the module docstring); never raises a network or server failure."""
    store = client.store
    hashes = pending_uploads(store)
    if not hashes:
        return UploadResult()
    up = _Upload(client, progress)
    try:
        states = up.status(hashes)
        todo = []
        for h in hashes:
            if h not in states:
                continue
            state, received, server_size = states[h]
            if state == "complete":
                store.attachments.confirm(h)
                up.done_files += 1
                continue
            size = store.attachments.size(h)
            if server_size is not None and server_size != size:
                up.note(f"the server holds part of attachment {h[:12]} with another size")
            elif size > MAX_ATTACHMENT_BYTES:
                up.note(f"attachment {h[:12]} is larger than {MAX_ATTACHMENT_BYTES} bytes")
            else:
                todo.append((h, received if state == "partial" else 0, size))
        up.total_bytes = sum(size - offset for _, offset, size in todo)
        up.emit()
        for h, offset, size in todo:
            try:
                up.send(h, offset, size)
            except (_Stopped, RequestRejected) as exc:
                up.note(str(exc))
    except (NetworkError, ServerError, ProtocolError, RequestRejected) as exc:
        # Stop quietly: what the server holds is kept there, and the next sync resumes.
        up.error = str(exc)
    store.attachments.evict()
    return UploadResult(up.done_files, up.sent, len(pending_uploads(store)), up.skipped, up.error)


def download(client: "SyncClient", content_hash: str, progress: Progress | None = None) -> Attachment:
    """Fetch one attachment into the store (see ``SyncClient.download_attachment``)."""
    if not _HASH.fullmatch(content_hash):
        raise ValueError("a content hash is 64 lower-case hex digits")
    attachments = client.store.attachments
    if attachments.exists(content_hash):
        attachments.touch(content_hash)
        return Attachment(content_hash, attachments.size(content_hash))
    path = f"/v1/attachments/{content_hash}"
    headers = {H_SCHEMA: str(SCHEMA_VERSION)}

    def emit(done: int, total: int) -> None:
        if progress is not None:
            from .sync import SyncProgress

            progress(SyncProgress("downloading", 0, client._sent, client._received, done, total))

    def ranges() -> Iterator[bytes]:
        offset = 0
        size: int | None = None
        while True:
            resp = client._exchange("GET", path, f"offset={offset}&length={MAX_CHUNK_BYTES}", b"", headers)
            if resp.status != 200:
                code, message, _ = _error(resp)
                raise RequestRejected(code, message, resp.status)
            announced = resp.headers.get(H_ATTACHMENT_SIZE.lower(), "")
            whole = int(announced) if announced.isdigit() else None
            if whole is None or whole > MAX_ATTACHMENT_BYTES or (size is not None and whole != size):
                raise ProtocolError(f"the download of {content_hash[:12]} has no usable size")
            size = whole
            body = resp.body
            if len(body) > MAX_CHUNK_BYTES or offset + len(body) > size or (not body and offset < size):
                raise ProtocolError(f"the server sent a wrong range of {content_hash[:12]}")
            offset += len(body)
            emit(offset, size)
            yield body
            if offset >= size:
                return

    got = attachments.receive(content_hash, ranges())
    attachments.evict(keep=(content_hash,))
    return got
