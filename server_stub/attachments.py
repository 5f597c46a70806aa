"""Attachments (photos) on the district server: where their bytes live and who may reach them.

Two parts, see docs/protocol.md §16:

* :class:`AttachmentStorage` — the small interface the HTTP endpoints use to keep
  content-addressed bytes, uploaded in chunks and resumable; :class:`DirectoryStorage`
  implements it on a local (or shared) folder.  The interface leaves room for an object
  store (multipart upload, then a conditional copy under the hash).
* the scope index — the ``attachment_refs`` table, kept by :func:`index_record` in the
  transaction that writes a record: which records (and so which grids) refer to which
  content hash.  A device may reach a hash only when a record of one of its grids
  refers to it (:func:`hashes_in_scope`).

Nothing half-written is ever visible as complete: a partial upload grows in
``partial/``, is fsynced after every chunk, and only once its SHA-256 matches the
name is it renamed, atomically, into ``complete/<aa>/<hash>``.  Every change of one
hash's files happens under a per-hash lock: a thread lock in this process and an
``flock`` on a lock file shared by every process using the folder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from fieldsync.attachments import fsync_dir
from fieldsync.merge import DELETED

from .db import Database, Tx

__all__ = [
    "AttachmentState", "AttachmentStorage", "DirectoryStorage",
    "AttachmentError", "OffsetMismatch", "SizeMismatch", "HashMismatch", "NotComplete",
    "is_content_hash", "index_record", "hashes_in_scope", "backfill_refs", "default_folder",
    "STALE_PARTIAL_MS", "ATTACHMENTS_ENV", "REFS_FIELD",
]

STALE_PARTIAL_MS = 7 * 24 * 3600 * 1000  # partial uploads no device continued for this long are removed
ATTACHMENTS_ENV = "FIELDSYNC_ATTACHMENTS"
REFS_FIELD = "attachments"  # the record field (any kind) listing the content hashes it refers to

_HASH_RE = re.compile(r"[0-9a-f]{64}")
_READ_BLOCK = 1024 * 1024


def is_content_hash(value: object) -> bool:
    """True for a content hash as the protocol spells it: 64 lower-case hex digits."""
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- storage ----------------------------------------------------------------------------


class AttachmentState(NamedTuple):
    """What the storage holds of one hash.

    ``received`` bytes are kept, in order from the start; ``size`` is the whole
    size announced by the first chunk (None when nothing was received);
    ``complete`` means verified and served.
    """

    received: int
    size: int | None
    complete: bool

    @property
    def name(self) -> str:
        """The protocol's ``state``: missing, partial or complete."""
        return "complete" if self.complete else ("partial" if self.received > 0 else "missing")


class AttachmentError(Exception):
    """A chunk the storage did not take; the subclasses say why."""


class OffsetMismatch(AttachmentError):
    def __init__(self, received: int) -> None:
        self.received = received
        super().__init__(f"the upload continues at byte {received}")


class SizeMismatch(AttachmentError):
    def __init__(self, size: int, received: int) -> None:
        self.size = size
        self.received = received
        super().__init__(f"the upload in progress announced {size} bytes")


class HashMismatch(AttachmentError):
    def __init__(self) -> None:
        super().__init__("the bytes received do not have this SHA-256; they were discarded")


class NotComplete(AttachmentError):
    def __init__(self) -> None:
        super().__init__("this attachment has not been received completely")


class AttachmentStorage(ABC):
    """Content-addressed attachment bytes, uploaded in order from byte 0 and resumable.

    Implementations must be safe for concurrent use from many threads and
    processes: two uploads of the same hash never corrupt each other, and a hash
    becomes complete (visible to :meth:`open_range`) only after its bytes were
    verified against it, atomically.
    """

    @abstractmethod
    def state(self, digest: str) -> AttachmentState:
        """What is held of ``digest`` now."""

    @abstractmethod
    def append(self, digest: str, offset: int, data: bytes, size: int) -> AttachmentState:
        """Add ``data`` at ``offset`` of the ``size``-byte attachment ``digest``.

        When the last byte arrives the whole is checked against ``digest``.
        Returns the new state.  A complete hash takes nothing and returns its state
        (a duplicate).  Raises :class:`OffsetMismatch` when ``offset`` is not the
        bytes held, :class:`SizeMismatch` when an upload in progress announced
        another size, :class:`HashMismatch` (after discarding everything received)
        when the bytes do not hash to ``digest``, ``ValueError`` when the chunk
        ends past ``size``.
        """

    @abstractmethod
    def open_range(self, digest: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of a complete attachment from ``offset``; :class:`NotComplete` otherwise."""

    @abstractmethod
    def remove_partial(self, digest: str) -> None:
        """Discard an upload in progress (a complete attachment is left as it is)."""

    @abstractmethod
    def remove_stale(self, older_than_ms: int = STALE_PARTIAL_MS) -> int:
        """Discard uploads in progress that nobody continued for ``older_than_ms``; returns how many."""


def _check(digest: str) -> str:
    # Names reach the file system: anything but a content hash is refused here too.
    if not is_content_hash(digest):
        raise ValueError("an attachment is named by 64 lower-case hex digits")
    return digest


class DirectoryStorage(AttachmentStorage):
    """Attachments in a folder (local disk, or one shared by several server processes).

    Layout::

        complete/<aa>/<hash>     verified attachments, never changed once there
        partial/<hash>.part      the bytes received so far (fsynced after every chunk)
        partial/<hash>.size      the size the first chunk announced
        locks/<aa>.lock          flock targets, one per two-hex-digit prefix (never removed)

    Folders are created on first use, so a server that never sees an
    attachment leaves no trace.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.complete_dir = self.root / "complete"
        self.partial_dir = self.root / "partial"
        self.locks_dir = self.root / "locks"
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"DirectoryStorage({str(self.root)!r})"

    def ensure(self) -> None:
        """Create the folders now (a server checks at start-up that it can write there)."""
        for folder in (self.complete_dir, self.partial_dir, self.locks_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # paths
    def _complete(self, digest: str) -> Path:
        return self.complete_dir / digest[:2] / digest

    def _part(self, digest: str) -> Path:
        return self.partial_dir / f"{digest}.part"

    def _size_file(self, digest: str) -> Path:
        return self.partial_dir / f"{digest}.size"

    @contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        """Hold ``digest``'s lock: a thread lock here, an flock for other processes."""
        stripe = digest[:2]
        with self._guard:
            lock = self._thread_locks.setdefault(stripe, threading.Lock())
        with lock:
            self.locks_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.locks_dir / f"{stripe}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    # reading state (under the lock)
    def _held(self, digest: str) -> AttachmentState:
        try:
            size = self._complete(digest).stat().st_size
            return AttachmentState(size, size, True)
        except FileNotFoundError:
            pass
        try:
            received = self._part(digest).stat().st_size
        except FileNotFoundError:
            received = 0
        if received == 0:
            return AttachmentState(0, None, False)
        try:
            announced = int(self._size_file(digest).read_text("ascii"))
        except (FileNotFoundError, ValueError):
            # A size file lost in a crash: the bytes cannot be checked against a size; start again.
            self._discard(digest)
            return AttachmentState(0, None, False)
        return AttachmentState(received, announced, False)

    def _discard(self, digest: str) -> None:
        for path in (self._part(digest), self._size_file(digest)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _write_size(self, digest: str, size: int) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.partial_dir / f"{digest}.size.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, str(size).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._size_file(digest))

    # the interface
    def state(self, digest: str) -> AttachmentState:
        _check(digest)
        with self._locked(digest):
            return self._held(digest)

    def append(self, digest: str, offset: int, data: bytes, size: int) -> AttachmentState:
        _check(digest)
        if offset < 0 or size < 0 or offset + len(data) > size:
            raise ValueError("the chunk ends past the attachment's size")
        with self._locked(digest):
            held = self._held(digest)
            if held.complete:
                # A duplicate; also clears what a crash after the rename may have left.
                self._discard(digest)
                return held
            if held.size is not None and held.size != size:
                raise SizeMismatch(held.size, held.received)
            if offset != held.received:
                raise OffsetMismatch(held.received)
            part = self._part(digest)
            if held.received == 0:
                self._write_size(digest, size)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            else:
                flags = os.O_WRONLY | os.O_APPEND
            if data or held.received == 0:
                fd = os.open(part, flags, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if held.received == 0:
                    fsync_dir(self.partial_dir)
            received = held.received + len(data)
            if received < size:
                return AttachmentState(received, size if received else None, False)
            return self._finish(digest, size)

    def _finish(self, digest: str, size: int) -> AttachmentState:
        part = self._part(digest)
        sha = hashlib.sha256()
        with open(part, "rb") as fh:
            while block := fh.read(_READ_BLOCK):
                sha.update(block)
        if sha.hexdigest() != digest:
            self._discard(digest)
            raise HashMismatch()
        target = self._complete(digest)
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.complete_dir)
        os.replace(part, target)  # atomic: the complete name only ever holds verified bytes
        fsync_dir(target.parent)
        self._discard(digest)
        return AttachmentState(size, size, True)

    def open_range(self, digest: str, offset: int, length: int) -> bytes:
        _check(digest)
        try:
            with open(self._complete(digest), "rb") as fh:
                fh.seek(offset)
                return fh.read(max(0, length))
        except FileNotFoundError:
            raise NotComplete() from None

    def remove_partial(self, digest: str) -> None:
        _check(digest)
        with self._locked(digest):
            self._discard(digest)

    def remove_stale(self, older_than_ms: int = STALE_PARTIAL_MS) -> int:
        try:
            names = os.listdir(self.partial_dir)
        except FileNotFoundError:
            return 0
        cutoff = time.time() - older_than_ms / 1000
        removed = 0
        for digest in sorted({n[:64] for n in names if is_content_hash(n[:64])}):
            with self._locked(digest):
                files = [self.partial_dir / n for n in os.listdir(self.partial_dir) if n.startswith(digest)]
                newest = 0.0
                for path in files:
                    try:
                        newest = max(newest, path.stat().st_mtime)
                    except FileNotFoundError:
                        pass
                if not files or newest >= cutoff:
                    continue
                for path in files:
                    try:
                        path.unlink()
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                removed += 1
        return removed


def default_folder(db: Database) -> Path:
    """Where a district keeps attachments when it is not told: $FIELDSYNC_ATTACHMENTS, else
    ``<db file>-attachments`` beside a SQLite database, else ``./attachments``."""
    configured = os.environ.get(ATTACHMENTS_ENV)
    if configured:
        return Path(configured).absolute()
    if db.dialect == "sqlite":
        return Path(f"{db.url[len('sqlite:///'):]}-attachments").absolute()
    return Path("attachments").absolute()


# -- the scope index --------------------------------------------------------------------


def _hashes_of(state: Mapping[str, Any]) -> set[str]:
    """The content hashes a stored record state ({field: [value, stamp, base]}) refers to."""
    tomb = state.get(DELETED)
    if tomb and tomb[0]:
        return set()  # a deleted record grants access to nothing
    write = state.get(REFS_FIELD)
    value = write[0] if isinstance(write, (list, tuple)) and write else None
    if not isinstance(value, list):
        return set()
    return {h for h in value if is_content_hash(h)}


def index_record(tx: Tx, collection: str, rid: str, grid: str, state: Mapping[str, Any]) -> None:
    """Keep ``attachment_refs`` in step with a record just written (in the same transaction).

    Called for every stored write, so a grid move, an edited list and a delete
    all take effect with the record.  A record that never had the field (fields
    are never removed from a stored state) costs nothing.
    """
    if REFS_FIELD not in state:
        return
    tx.execute("DELETE FROM attachment_refs WHERE collection = ? AND record_id = ?", (collection, rid))
    tx.executemany("INSERT INTO attachment_refs (hash, collection, record_id, grid) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING", [(h, collection, rid, grid) for h in sorted(_hashes_of(state))])


def hashes_in_scope(tx: Tx, worker_id: str, hashes: Iterable[str]) -> set[str]:
    """Those of ``hashes`` a record in one of the worker's grids refers to."""
    wanted = sorted(set(hashes))
    if not wanted:
        return set()
    marks = ", ".join("?" for _ in wanted)
    return {str(r[0]) for r in tx.all(
        "SELECT DISTINCT r.hash FROM attachment_refs r JOIN assignments a ON a.grid_id = r.grid "
        f"WHERE a.worker_id = ? AND r.hash IN ({marks})", (worker_id, *wanted))}


_BACKFILL_KEY = "attachment_refs"


def backfill_refs(db: Database) -> None:
    """Index the records written before ``attachment_refs`` existed (once per database)."""
    with db.transaction() as tx:
        if tx.one("SELECT 1 FROM server_meta WHERE key = ?", (_BACKFILL_KEY,)):
            return
    with db.transaction() as tx:
        if tx.dialect == "postgresql":
            # Writers wait until the index is built: none can change a record's
            # references between this scan and the commit.
            tx.execute("LOCK TABLE attachment_refs IN EXCLUSIVE MODE")
        if tx.one("SELECT 1 FROM server_meta WHERE key = ?", (_BACKFILL_KEY,)):
            return
        for collection, rid, grid, body in tx.all(
            "SELECT collection, id, grid, body FROM records WHERE body LIKE ?", (f'%"{REFS_FIELD}"%',)
        ):
            state = json.loads(body)
            tx.executemany("INSERT INTO attachment_refs (hash, collection, record_id, grid) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT DO NOTHING", [(h, collection, rid, grid) for h in sorted(_hashes_of(state))])
        tx.execute("INSERT INTO server_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                   (_BACKFILL_KEY, str(_now_ms())))
