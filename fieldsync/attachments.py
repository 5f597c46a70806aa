"""Encrypted attachment files of a device store (photos and other files).

Each attachment is named by the SHA-256 of its plaintext (its content hash,
the value records refer to) and stored once, encrypted in chunks (see
:meth:`fieldsync.crypto.Keyring.encrypt_stream`) in a file whose name is a
keyed hash of the content hash.  A file is written to a temporary name,
flushed to disk and renamed, so a crash never leaves a half-written
attachment under its real name.

Each attachment also has a state (migration 0003): where it came from
(``local``: made on this device, or ``downloaded``), whether the server has
confirmed it holds it complete, and when it was last used.  Confirmed
attachments form a cache kept under :attr:`AttachmentStore.cache_limit_bytes`
by least-recently-used eviction (:meth:`AttachmentStore.evict`); a photo made
here is never evicted before the server has it.  Downloads arrive through
:meth:`AttachmentStore.receive`, streaming, and become visible only once their
SHA-256 has been checked.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterable, Iterator

from .crypto import CHUNK_SIZE, Keyring
from .errors import IntegrityError, RecordNotFound, StoreFullError

__all__ = ["Attachment", "AttachmentState", "AttachmentStore", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class Attachment:
    hash: str
    size: int


@dataclass(frozen=True)
class AttachmentState:
    """Where one attachment stands: ``origin`` is ``local`` or ``downloaded``."""

    hash: str
    size: int
    origin: str
    confirmed: bool  # the server holds it complete
    last_used_ms: int


class _Pieces(io.RawIOBase):
    """A readable file over an iterable of byte strings, hashing what passes through."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._it = iter(pieces)
        self._buf = memoryview(b"")
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: "bytearray | memoryview") -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.digest.update(self._buf[:n])
        self._buf = self._buf[n:]
        self.size += n
        return n


def _hash_file(src: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (fsync of the folder itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AttachmentStore:
    """Add, read and remove attachments; reached as ``store.attachments``."""

    def __init__(
        self,
        folder: Path,
        keyring: Keyring,
        conn: sqlite3.Connection,
        atomic: Callable[[], ContextManager[object]],
    ) -> None:
        self.folder = folder
        self._keys = keyring
        self._conn = conn
        self._atomic = atomic
        self.cache_limit_bytes = DEFAULT_CACHE_BYTES
        self.now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
        folder.mkdir(mode=0o700, exist_ok=True)
        for leftover in folder.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)

    def add(self, source: str | os.PathLike[str] | BinaryIO) -> Attachment:
        """Encrypt and keep a file; returns its content hash.  Adding it twice keeps one copy.

        ``source`` is a path or a seekable binary file (it is read twice: once
        to hash, once to encrypt, so memory stays flat for any size).
        """
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                return self.add(fh)
        start = source.tell()
        content_hash, size = _hash_file(source)
        if self.exists(content_hash):
            self._remember(content_hash, "local", confirmed=False)
            return Attachment(content_hash, size)
        source.seek(start)
        self._write(content_hash, source)
        self._record(content_hash, size, "local", confirmed=False)
        return Attachment(content_hash, size)

    def receive(self, content_hash: str, pieces: Iterable[bytes], size: int | None = None) -> Attachment:
        """Keep an attachment arriving in pieces (a download from the server), streaming.

        The pieces are encrypted as they come; nothing is visible under the
        attachment's name until the last piece has arrived and the SHA-256 of
        the whole equals ``content_hash`` (and the byte count ``size``, when
        given).  Otherwise :class:`IntegrityError`, and nothing is kept.  An
        error raised by ``pieces`` (a network failure) propagates, also
        leaving nothing behind.  The attachment counts as confirmed by the
        server (origin ``downloaded``), so it may leave the cache later.
        """
        if self.exists(content_hash):
            self._remember(content_hash, "downloaded", confirmed=True)
            return Attachment(content_hash, self.size(content_hash))
        reader = _Pieces(pieces)

        def check() -> None:
            if reader.digest.hexdigest() != content_hash or (size is not None and reader.size != size):
                raise IntegrityError(f"attachment {content_hash[:12]} arrived damaged "
                                     f"({reader.size} bytes, not matching its content hash)")

        self._write(content_hash, io.BufferedReader(reader, CHUNK_SIZE), before_rename=check)
        self._record(content_hash, reader.size, "downloaded", confirmed=True)
        return Attachment(content_hash, reader.size)

    def _write(self, content_hash: str, source: BinaryIO, before_rename: Callable[[], None] | None = None) -> None:
        name = self._keys.attachment_name(content_hash)
        tmp = self.folder / f".tmp-{os.urandom(8).hex()}"
        try:
            with open(tmp, "wb") as out:
                self._keys.encrypt_stream(source, out, content_hash)
                out.flush()
                os.fsync(out.fileno())
            if before_rename is not None:
                before_rename()
            os.replace(tmp, self.folder / name)
            fsync_dir(self.folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreFullError(f"could not save attachment: {exc.strerror or exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _record(self, content_hash: str, size: int, origin: str, confirmed: bool) -> None:
        name = self._name(content_hash)
        now = self.now_ms()
        with self._atomic():
            self._conn.execute(
                "INSERT OR IGNORE INTO attachments (name, size, created_ms) VALUES (?, ?, ?)", (name, size, now))
            self._conn.execute(
                "INSERT OR REPLACE INTO attachment_state (name, sealed, origin, confirmed, last_used_ms) "
                "VALUES (?, ?, ?, ?, ?)", (name, self._seal(content_hash, name), origin, int(confirmed), now))

    def _seal(self, content_hash: str, name: str) -> bytes:
        return self._keys.seal(content_hash.encode(), "_attachment", name)

    def _remember(self, content_hash: str, origin: str, confirmed: bool) -> None:
        """Give an existing attachment a state row if it has none (one added before migration 0003)."""
        name = self._name(content_hash)
        with self._atomic():
            self._conn.execute(
                "INSERT OR IGNORE INTO attachment_state (name, sealed, origin, confirmed, last_used_ms) "
                "VALUES (?, ?, ?, ?, ?)", (name, self._seal(content_hash, name), origin, int(confirmed), self.now_ms()))
            self._conn.execute("UPDATE attachment_state SET sealed = ? WHERE name = ? AND sealed IS NULL",
                               (self._seal(content_hash, name), name))

    def _name(self, content_hash: str) -> str:
        return self._keys.attachment_name(content_hash)

    def exists(self, content_hash: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM attachments WHERE name = ?", (self._name(content_hash),)).fetchone()
        return row is not None

    def size(self, content_hash: str) -> int:
        row = self._conn.execute("SELECT size FROM attachments WHERE name = ?", (self._name(content_hash),)).fetchone()
        if row is None:
            raise RecordNotFound(f"no attachment {content_hash[:12]}")
        return int(row[0])

    def chunks(self, content_hash: str, *, touch: bool = True) -> Iterator[bytes]:
        """Yield the plaintext in chunks, verifying every one (IntegrityError if tampered).

        Reading counts as a use for the cache's LRU order unless ``touch`` is False.
        """
        row = self._conn.execute("SELECT name FROM attachments WHERE name = ?", (self._name(content_hash),)).fetchone()
        if row is None:
            raise RecordNotFound(f"no attachment {content_hash[:12]}")
        if touch:
            self.touch(content_hash)
        digest = hashlib.sha256()
        try:
            fh = open(self.folder / row[0], "rb")
        except FileNotFoundError as exc:
            raise IntegrityError(f"attachment {content_hash[:12]} is missing its file") from exc
        with fh:
            for chunk in self._keys.decrypt_stream(fh, content_hash):
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != content_hash:
            raise IntegrityError(f"attachment {content_hash[:12]} does not match its content hash")

    def read(self, content_hash: str) -> bytes:
        """The whole plaintext (for small files; use :meth:`chunks` or :meth:`export` for big ones)."""
        return b"".join(self.chunks(content_hash))

    def export(self, content_hash: str, dest: BinaryIO) -> int:
        """Write the plaintext to ``dest``; returns the byte count."""
        n = 0
        for chunk in self.chunks(content_hash):
            dest.write(chunk)
            n += len(chunk)
        return n

    def remove(self, content_hash: str) -> None:
        self._remove_name(self._name(content_hash))

    def _remove_name(self, name: str) -> None:
        with self._atomic():
            self._forget(name)
        (self.folder / name).unlink(missing_ok=True)

    def _forget(self, name: str) -> None:
        self._conn.execute("DELETE FROM attachments WHERE name = ?", (name,))
        self._conn.execute("DELETE FROM attachment_state WHERE name = ?", (name,))

    # -- state: uploads and the cache -------------------------------------------
    def state(self, content_hash: str) -> AttachmentState | None:
        """The attachment's state, or None when this device does not hold it."""
        name = self._name(content_hash)
        row = self._conn.execute(
            "SELECT a.size, s.origin, s.confirmed, s.last_used_ms FROM attachments a "
            "LEFT JOIN attachment_state s ON s.name = a.name WHERE a.name = ?", (name,)).fetchone()
        if row is None:
            return None
        size, origin, confirmed, used = row
        if origin is None:  # no state row: added before migration 0003 (and made here)
            return AttachmentState(content_hash, int(size), "local", False, 0)
        return AttachmentState(content_hash, int(size), str(origin), bool(confirmed), int(used))

    def unconfirmed_count(self) -> int:
        """How many attachments made here the server has not confirmed yet (cheap: no decryption)."""
        row = self._conn.execute(
            "SELECT count(*) FROM attachments a LEFT JOIN attachment_state s ON s.name = a.name "
            "WHERE s.confirmed IS NULL OR s.confirmed = 0").fetchone()
        return int(row[0])

    def confirm(self, content_hash: str) -> None:
        """The server holds this attachment complete: from now on it may leave the cache."""
        name = self._name(content_hash)
        if self.state(content_hash) is None:
            return
        self._remember(content_hash, "local", confirmed=True)
        with self._atomic():
            self._conn.execute("UPDATE attachment_state SET confirmed = 1 WHERE name = ?", (name,))

    def touch(self, content_hash: str) -> None:
        """Mark the attachment as used now (for the LRU order of the cache)."""
        with self._atomic():
            self._conn.execute("UPDATE attachment_state SET last_used_ms = ? WHERE name = ?",
                               (self.now_ms(), self._name(content_hash)))

    def cached(self) -> list[AttachmentState]:
        """Every attachment with a known hash, least recently used first (hashes unsealed here)."""
        rows = self._conn.execute(
            "SELECT s.name, s.sealed, a.size, s.origin, s.confirmed, s.last_used_ms FROM attachment_state s "
            "JOIN attachments a ON a.name = s.name WHERE s.sealed IS NOT NULL ORDER BY s.last_used_ms, s.name"
        ).fetchall()
        return [AttachmentState(self._keys.open(sealed, "_attachment", name).decode(), int(size), str(origin),
                                bool(confirmed), int(used)) for name, sealed, size, origin, confirmed, used in rows]

    def cache_bytes(self) -> int:
        """Bytes held by attachments that may be evicted (the server has them)."""
        row = self._conn.execute("SELECT coalesce(sum(a.size), 0) FROM attachments a "
                                 "JOIN attachment_state s ON s.name = a.name WHERE s.confirmed = 1").fetchone()
        return int(row[0])

    def evict(self, limit_bytes: int | None = None, keep: Iterable[str] = ()) -> int:
        """Remove least recently used attachments the server has until they use at most
        ``limit_bytes`` (default :attr:`cache_limit_bytes`); returns how many were removed.

        Only confirmed attachments are candidates: downloaded ones, and ones
        made here once the server has confirmed them complete.  A photo made
        here and not yet confirmed is never removed, and does not count
        against the limit.  The attachments named in ``keep`` (content
        hashes: the one just downloaded to be shown) stay in any case.
        """
        limit = self.cache_limit_bytes if limit_bytes is None else limit_bytes
        spared = {self._name(h) for h in keep}
        with self._atomic():
            rows = self._conn.execute(
                "SELECT a.name, a.size FROM attachments a JOIN attachment_state s ON s.name = a.name "
                "WHERE s.confirmed = 1 ORDER BY s.last_used_ms, a.name").fetchall()
            total = sum(int(size) for _, size in rows)
            doomed = []
            for name, size in rows:
                if total <= limit:
                    break
                if name not in spared:
                    doomed.append(name)
                    total -= int(size)
            for name in doomed:
                self._forget(name)
        for name in doomed:  # files go only once their rows are gone for good
            (self.folder / name).unlink(missing_ok=True)
        return len(doomed)
