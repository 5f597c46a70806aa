"""The encrypted offline store: one :class:`Store` facade per device.

A store is one SQLite file (WAL, ``synchronous=FULL``) plus a folder of
encrypted attachments beside it (``<path>-attachments``).  Every record write
commits, in ONE transaction, the record's sealed body (values and per-field
clocks), its blind-index search tokens and an outbox entry for sync.
``store.atomic()`` groups several writes into one transaction.

Usage::

    store = Store.create("tablet.fsdb", pin="2580")
    hid = store.put("households", {"grid_id": "g1", "address": "...", "head_name": "张三"})
    store.find("households", "head_name", "张三")
    store.close()
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from sqlite_utils import Database

from . import crypto
from .attachments import AttachmentStore
from .clock import HybridClock, Stamp
from .errors import (
    NotAStoreError,
    RecordNotFound,
    StoreErasedError,
    StoreError,
    StoreFullError,
    ValidationError,
    WrongPinError,
)
from .merge import DELETED, FieldWrite
from .migrations import STORE_FORMAT, store_migrations
from .protocol import dumps
from .replica import ReplicaMixin
from .schema import Kind, Registry, default_registry, normalise
from .unlock import PinGuard
from .writebatch import WriteBatch

__all__ = ["Store", "OutboxEntry", "StoreStatus"]

_Wire = list  # [value, stamp, base] as stored and sent


@dataclass(frozen=True)
class OutboxEntry:
    """One local change waiting for the server's acknowledgement."""

    seq: int
    collection: str
    id: str
    grid: str
    fields: dict[str, FieldWrite]


@dataclass(frozen=True)
class StoreStatus:
    records: dict[str, int]
    outbox: int
    attachments: int


def _is_disk_error(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("disk is full", "disk i/o error", "database or disk is full", "readonly"))


class Store(ReplicaMixin):
    """An unlocked, encrypted store of typed records.  Thread-safe.

    Open one with :meth:`create` or :meth:`open`.  ``kdf`` sets the PIN key
    derivation cost (OWASP's scrypt parameters by default; lower it only in
    tests).  ``wall`` (milliseconds) and ``now`` (seconds) inject time.
    """

    path: Path
    db: Database
    registry: Registry
    node_id: str
    clock: HybridClock
    attachments: AttachmentStore
    _conn: sqlite3.Connection
    _keys: crypto.Keyring
    _lock: threading.RLock
    _dek: bytes
    _closed: bool
    _offset_ms: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use Store.create(path, pin) or Store.open(path, pin)")

    # -- opening ---------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        pin: str,
        *,
        registry: Registry | None = None,
        kdf: crypto.KdfParams = crypto.OWASP_SCRYPT,
        wall: Callable[[], int] | None = None,
        now: Callable[[], float] = time.time,
    ) -> "Store":
        """Create a new store at ``path`` protected by ``pin``; the file must not exist."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists; open it instead")
        conn = cls._connect(path)
        try:
            db = Database(conn)
            store_migrations.apply(db)
            guard = PinGuard(conn, now)
            with db.atomic():
                dek = guard.initialise(pin, kdf)
                conn.execute("INSERT INTO meta VALUES ('format', ?)", (STORE_FORMAT,))
                conn.execute("INSERT INTO meta VALUES ('node_id', ?)", ("n" + uuid.uuid4().hex[:15],))
        except BaseException:
            conn.close()
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            raise
        return cls._unlocked(path, conn, db, dek, registry, wall)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        pin: str,
        *,
        registry: Registry | None = None,
        wall: Callable[[], int] | None = None,
        now: Callable[[], float] = time.time,
    ) -> "Store":
        """Unlock the store at ``path``.

        Raises :class:`NotAStoreError` if the file is not a store,
        :class:`WrongPinError` / :class:`PinLockedError` for a wrong PIN, and
        :class:`StoreErasedError` after too many wrong PINs or a remote wipe.
        """
        path = Path(path)
        if not path.is_file():
            raise NotAStoreError(f"{path}: no store here (create one with 'fieldsync init')")
        conn = cls._connect(path, existing=True)
        try:
            db = Database(conn)
            try:
                fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            except sqlite3.DatabaseError as exc:
                raise NotAStoreError(f"{path}: not a fieldsync store") from exc
            if not fmt or fmt[0] != STORE_FORMAT:
                raise NotAStoreError(f"{path}: not a fieldsync store")
            store_migrations.apply(db)
            guard = PinGuard(conn, now)
            conn.execute("BEGIN IMMEDIATE")
            try:
                dek = guard.unlock(pin)
            except (WrongPinError, StoreErasedError):
                conn.execute("COMMIT")
                if guard.erased():
                    cls._scrub(conn)
                raise
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return cls._unlocked(path, conn, db, dek, registry, wall)

    @staticmethod
    def _connect(path: Path, *, existing: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        except sqlite3.DatabaseError as exc:
            raise NotAStoreError(f"{path}: cannot open as a store ({exc})") from exc
        try:
            if existing:
                # Look before changing anything: a file that is not a store must
                # be left as it was (journal mode in its header, permissions).
                fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if not fmt or fmt[0] != STORE_FORMAT:
                    raise NotAStoreError(f"{path}: not a fieldsync store")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise NotAStoreError(f"{path}: cannot open as a store ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        if os.name == "posix":
            os.chmod(path, 0o600)
        return conn

    @staticmethod
    def _scrub(conn: sqlite3.Connection) -> None:
        # Push the erased key pages out of the WAL and truncate it, so no copy
        # of the wrapped key survives anywhere in the files.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @classmethod
    def _unlocked(
        cls,
        path: Path,
        conn: sqlite3.Connection,
        db: Database,
        dek: bytes,
        registry: Registry | None,
        wall: Callable[[], int] | None,
    ) -> "Store":
        self = object.__new__(cls)
        self.path = path
        self._conn = conn
        self.db = db
        self._dek = dek
        self._keys = crypto.Keyring(dek)
        self._lock = threading.RLock()
        self.registry = registry if registry is not None else default_registry()
        self.node_id = self._meta("node_id")
        last = self._meta("clock")
        self._offset_ms = int(self._meta("clock_offset_ms") or 0)
        self.clock = HybridClock(self.node_id, wall=wall or self.now_ms, last=Stamp.decode(last) if last else None)
        self.attachments = AttachmentStore(Path(f"{path}-attachments"), self._keys, conn, self.atomic)
        self._closed = False
        return self

    def close(self) -> None:
        """Close the store; the data key is dropped from this object."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                self._dek = b""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------
    @contextmanager
    def atomic(self) -> Iterator["Store"]:
        """Group writes into one transaction (nested blocks become savepoints).

        A disk-full or I/O error rolls everything back and raises
        :class:`StoreFullError`: nothing half-written is left.
        """
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                with self.db.atomic():
                    yield self
            except sqlite3.OperationalError as exc:
                if _is_disk_error(exc):
                    raise StoreFullError(f"nothing was saved: {exc}") from exc
                raise StoreError(f"store write failed: {exc}") from exc

    # -- meta ------------------------------------------------------------
    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def get_meta(self, key: str) -> Any:
        """A value the sync layer or an app keeps beside the data (not encrypted: no personal data)."""
        with self._lock:
            return self._meta("app:" + key)

    def set_meta(self, key: str, value: Any) -> None:
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("app:" + key, value))

    def put_local(self, name: str, value: Any) -> None:
        """Keep a JSON value on this device only, encrypted (drafts, UI state); it never syncs."""
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               ("local:" + name, self._keys.seal(dumps(value), "_local", name)))

    def get_local(self, name: str, default: Any = None) -> Any:
        """A value kept with :meth:`put_local`, or ``default``."""
        with self._lock:
            sealed = self._meta("local:" + name)
        return default if sealed is None else json.loads(self._keys.open(sealed, "_local", name))

    def delete_local(self, name: str) -> None:
        with self.atomic():
            self._conn.execute("DELETE FROM meta WHERE key = ?", ("local:" + name,))

    def local_names(self, prefix: str = "") -> builtins.list[str]:
        """Names of the local values starting with ``prefix``."""
        with self._lock:
            rows = self._conn.execute("SELECT key FROM meta WHERE key LIKE ? ESCAPE '!' ORDER BY key",
                                      ("local:" + prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%",)
                                      ).fetchall()
        return [r[0][len("local:"):] for r in rows]

    def _set_secret(self, key: str, value: bytes) -> None:
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               ("secret:" + key, self._keys.seal(value, "_meta", key)))

    def _get_secret(self, key: str) -> bytes | None:
        with self._lock:
            sealed = self._meta("secret:" + key)
        return None if sealed is None else self._keys.open(sealed, "_meta", key)

    @property
    def clock_offset_ms(self) -> int:
        """Server time minus this device's time, as last measured by sync."""
        return int(self._meta("clock_offset_ms") or 0)

    def set_clock_offset(self, offset_ms: int) -> None:
        """Correct this device's clock by the measured offset (stamps and signatures use it)."""
        with self.atomic():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('clock_offset_ms', ?)", (int(offset_ms),))
        self._offset_ms = int(offset_ms)

    def now_ms(self) -> int:
        """This device's best estimate of the true time (system clock + measured offset)."""
        return time.time_ns() // 1_000_000 + self._offset_ms

    # -- records: reading ------------------------------------------------
    def _state(self, collection: str, rid: str, body: bytes) -> dict[str, _Wire]:
        data: dict[str, _Wire] = json.loads(self._keys.open(body, collection, rid))
        return data

    def _row(self, collection: str, rid: str) -> tuple[str, int, dict[str, _Wire]] | None:
        row = self._conn.execute(
            "SELECT grid, deleted, body FROM records WHERE collection = ? AND id = ?", (collection, rid)
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], self._state(collection, rid, row[2])

    @staticmethod
    def _values(rid: str, state: Mapping[str, _Wire]) -> dict[str, Any]:
        out = {k: w[0] for k, w in state.items() if k != DELETED}
        out["id"] = rid
        return out

    def get(self, collection: str, rid: str) -> dict[str, Any]:
        """The record's values with its ``id``; :class:`RecordNotFound` if absent or deleted."""
        self.registry.get(collection)
        with self._lock:
            found = self._row(collection, rid)
        if found is None or found[1]:
            raise RecordNotFound(f"no {collection} record {rid!r}")
        return self._values(rid, found[2])

    def list(self, collection: str, grid: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every live record of a collection (optionally of one grid), decrypted."""
        self.registry.get(collection)
        sql = "SELECT id, body FROM records WHERE collection = ? AND deleted = 0"
        params: builtins.list[Any] = [collection]
        if grid is not None:
            sql += " AND grid = ?"
            params.append(grid)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
        return [self._values(rid, self._state(collection, rid, body)) for rid, body in rows]

    def count(self, collection: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM records WHERE collection = ? AND deleted = 0", (collection,)
            ).fetchone()
        return int(row[0])

    def find(self, collection: str, field: str, value: str) -> builtins.list[dict[str, Any]]:
        """Records whose ``field`` equals ``value`` after normalisation, via the blind index."""
        kind = self.registry.get(collection)
        how = kind.search_fields().get(field)
        if how is None:
            searchable = ", ".join(kind.search_fields()) or "none"
            raise ValidationError(collection, field, f"is not searchable (searchable: {searchable})")
        token = self._keys.blind_token(collection, field, normalise(how, str(value)))
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.id, r.body FROM search s JOIN records r ON r.collection = s.collection AND r.id = s.id "
                "WHERE s.collection = ? AND s.field = ? AND s.token = ? AND r.deleted = 0 ORDER BY r.id",
                (collection, field, token),
            ).fetchall()
        return [self._values(rid, self._state(collection, rid, body)) for rid, body in rows]

    # -- records: writing ------------------------------------------------
    def put(self, collection: str, record: Mapping[str, Any]) -> str:
        """Create a record, or update the fields given (others stay); returns its id.

        The whole resulting record is validated first; a field set to ``None``
        is cleared.  Writing unchanged values makes no change and no outbox entry.
        """
        return self.put_many(collection, [record])[0]

    def put_many(self, collection: str, records: Iterable[Mapping[str, Any]]) -> builtins.list[str]:
        """:meth:`put` for many records in one transaction (all or nothing)."""
        kind = self.registry.get(collection)
        items = builtins.list(records)
        for record in items:
            if not isinstance(record, Mapping):
                raise ValidationError(kind.name, "*", "a record must be an object")
        ids = [record.get("id") or uuid.uuid4().hex for record in items]
        with self.atomic():
            known = self._states(collection, [rid for record, rid in zip(items, ids) if "id" in record])
            batch = WriteBatch(self._keys, self.clock)
            for record, rid in zip(items, ids):
                self._put_one(kind, rid, record, known, batch)
            batch.flush(self._conn)
        return ids

    def delete(self, collection: str, rid: str) -> None:
        """Delete a record: a tombstone with its own clock that syncs like any write."""
        kind = self.registry.get(collection)
        with self.atomic():
            found = self._row(collection, rid)
            if found is None or found[1]:
                raise RecordNotFound(f"no {collection} record {rid!r}")
            grid, _, state = found
            tomb = state.get(DELETED)
            writes = {DELETED: [True, self.clock.now().encode(), tomb[1] if tomb else None]}
            batch = WriteBatch(self._keys, self.clock)
            batch.save(kind, rid, grid, {**state, **writes}, writes, outbox=True, is_new=False)
            batch.flush(self._conn)

    def _states(self, collection: str, ids: builtins.list[str]) -> dict[str, tuple[str, int, dict[str, _Wire]]]:
        """The stored (grid, deleted, state) of the given records that exist, in a few queries."""
        out: dict[str, tuple[str, int, dict[str, _Wire]]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self._conn.execute(
                f"SELECT id, grid, deleted, body FROM records WHERE collection = ? AND id IN ({','.join('?' * len(chunk))})",
                (collection, *chunk),
            ).fetchall()
            for rid, grid, deleted, body in rows:
                out[rid] = (grid, deleted, self._state(collection, rid, body))
        return out

    def _put_one(self, kind: Kind, rid: str, record: Mapping[str, Any],
                 known: dict[str, tuple[str, int, dict[str, _Wire]]], batch: WriteBatch) -> None:
        found = known.get(rid)
        state: dict[str, _Wire] = found[2] if found else {}
        merged = {k: w[0] for k, w in state.items() if k != DELETED}
        merged.update(record)
        merged["id"] = rid
        merged = {k: v for k, v in merged.items() if v is not None}
        validated = kind.validate(merged)
        grid = kind.grid_of(validated)
        stamp = ""  # one stamp for all fields of this write, taken only if something changed
        writes: dict[str, _Wire] = {}
        for name, value in record.items():
            if name == "id":
                continue
            if name.startswith("_"):
                raise ValidationError(kind.name, name, "names starting with _ are reserved")
            current = state.get(name)
            if (current is not None and current[0] == value) or (current is None and value is None):
                continue
            stamp = stamp or self.clock.now().encode()
            writes[name] = [value, stamp, current[1] if current else None]
        if found is not None and found[1]:
            tomb = state.get(DELETED)
            stamp = stamp or self.clock.now().encode()
            writes[DELETED] = [False, stamp, tomb[1] if tomb else None]
        if not writes and found is not None:
            return
        new_state = {**state, **writes} if state else writes
        deleted = 1 if new_state.get(DELETED, (False,))[0] else 0
        known[rid] = (grid, deleted, new_state)  # a later record of the batch with the same id sees this one
        batch.save(kind, rid, grid, new_state, writes, outbox=True, is_new=found is None)

    # -- outbox ----------------------------------------------------------
    def outbox(self, limit: int = 500, after: int = 0) -> builtins.list[OutboxEntry]:
        """The oldest pending local changes, in ``seq`` order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, collection, id, grid, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        out = []
        for seq, collection, rid, grid, body in rows:
            raw = json.loads(self._keys.open(body, "_outbox", collection, rid))
            fields = {k: FieldWrite.from_wire(v) for k, v in raw.items()}
            out.append(OutboxEntry(seq, collection, rid, grid, fields))
        return out

    def outbox_changes(self, limit: int = 500, after: int = 0) -> builtins.list[tuple[int, bytes]]:
        """The oldest pending changes after seq ``after``, in seq order: each its ``seq`` and its
        JSON exactly as a push sends it (docs/protocol.md §6.4).

        An outbox entry holds its field writes in the wire encoding, so they are put into the
        change as they are, not decoded and encoded again.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, collection, id, grid, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [(seq, b'{"seq":%d,"collection":%b,"id":%b,"grid":%b,"fields":%b}' % (
                    seq, dumps(collection), dumps(rid), dumps(grid), self._keys.open(body, "_outbox", collection, rid)))
                for seq, collection, rid, grid, body in rows]

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def acknowledge(self, upto_seq: int) -> int:
        """Drop outbox entries the server acknowledged (``seq <= upto_seq``); returns how many."""
        with self.atomic():
            cur = self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))
            return cur.rowcount

    # -- PIN and status --------------------------------------------------
    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """Re-wrap the data key under ``new_pin`` after checking ``old_pin``.  No data is re-encrypted."""
        guard = PinGuard(self._conn)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                dek = guard.unlock(old_pin)
            except (WrongPinError, StoreErasedError):
                # Keep the failure count (and an erase on the last try): guessing
                # through change_pin must cost what guessing at open costs.
                self._conn.execute("COMMIT")
                if guard.erased():
                    self._scrub(self._conn)
                    self.close()
                raise
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                guard.rewrap(dek, new_pin)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            # The key wrapped under the old PIN must not linger in WAL frames.
            self._scrub(self._conn)

    def erase(self) -> None:
        """Crypto-erase: destroy the wrapped data key, so the data can never be read again."""
        with self.atomic():
            PinGuard(self._conn).erase()
        with self._lock:
            self._scrub(self._conn)
        self.close()

    def status(self) -> StoreStatus:
        with self._lock:
            counts = dict(self._conn.execute(
                "SELECT collection, count(*) FROM records WHERE deleted = 0 GROUP BY collection"
            ).fetchall())
            attachments = self._conn.execute("SELECT count(*) FROM attachments").fetchone()[0]
        return StoreStatus(
            records={name: int(counts.get(name, 0)) for name in self.registry.names()},
            outbox=self.outbox_size(),
            attachments=int(attachments),
        )

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when healthy)."""
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
