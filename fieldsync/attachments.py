"""Encrypted attachment files of a device store (photos and other files).

Each attachment is named by the SHA-256 of its plaintext (its content hash,
the value records refer to) and stored once, encrypted in chunks (see
:meth:`fieldsync.crypto.Keyring.encrypt_stream`) in a file whose name is a
keyed hash of the content hash.  A file is written to a temporary name,
flushed to disk and renamed, so a crash never leaves a half-written
attachment under its real name.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator

from .crypto import CHUNK_SIZE, Keyring
from .errors import IntegrityError, RecordNotFound, StoreFullError

__all__ = ["Attachment", "AttachmentStore"]


@dataclass(frozen=True)
class Attachment:
    hash: str
    size: int


def _hash_file(src: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
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
            return Attachment(content_hash, size)
        source.seek(start)
        name = self._keys.attachment_name(content_hash)
        tmp = self.folder / f".tmp-{os.urandom(8).hex()}"
        try:
            with open(tmp, "wb") as out:
                self._keys.encrypt_stream(source, out, content_hash)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.folder / name)
            _fsync_dir(self.folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreFullError(f"could not save attachment: {exc.strerror or exc}") from exc
        with self._atomic():
            self._conn.execute(
                "INSERT OR IGNORE INTO attachments (name, size, created_ms) VALUES (?, ?, ?)",
                (name, size, int(time.time() * 1000)),
            )
        return Attachment(content_hash, size)

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

    def chunks(self, content_hash: str) -> Iterator[bytes]:
        """Yield the plaintext in chunks, verifying every one (IntegrityError if tampered)."""
        row = self._conn.execute("SELECT name FROM attachments WHERE name = ?", (self._name(content_hash),)).fetchone()
        if row is None:
            raise RecordNotFound(f"no attachment {content_hash[:12]}")
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
        row = self._conn.execute("SELECT name FROM attachments WHERE name = ?", (self._name(content_hash),)).fetchone()
        if row is None:
            return
        with self._atomic():
            self._conn.execute("DELETE FROM attachments WHERE name = ?", (row[0],))
        (self.folder / row[0]).unlink(missing_ok=True)
