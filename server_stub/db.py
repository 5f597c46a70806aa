"""The server's storage seam: one small interface, two backends.

``connect(url)`` returns a :class:`Database` for ``sqlite:///path`` (the
embedded default: one file) or ``postgresql://...`` (psycopg 3, for districts
that run several server processes on one database).  All server logic is
written once against :class:`Tx`, in SQL both engines accept; the few
differences (placeholders, row locks, the upsert of a counter) live here.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["Database", "Tx", "connect", "SCHEMA"]

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL DEFAULT 'worker',
        department TEXT, password_hash TEXT)""",
    """CREATE TABLE IF NOT EXISTS assignments (
        worker_id TEXT NOT NULL, grid_id TEXT NOT NULL, PRIMARY KEY (worker_id, grid_id))""",
    """CREATE TABLE IF NOT EXISTS enroll_codes (
        code_hash TEXT PRIMARY KEY, worker_id TEXT NOT NULL, expires_ms BIGINT NOT NULL,
        used_ms BIGINT, created_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS enroll_attempts (
        source TEXT NOT NULL, at_ms BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS enroll_attempts_source ON enroll_attempts (source, at_ms)",
    """CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, public_key TEXT NOT NULL UNIQUE,
        node_id TEXT NOT NULL, name TEXT NOT NULL DEFAULT '', schema_version INTEGER NOT NULL DEFAULT 1,
        enrolled_ms BIGINT NOT NULL, last_seen_ms BIGINT, revoked_ms BIGINT, wipe INTEGER NOT NULL DEFAULT 0,
        last_seq BIGINT NOT NULL DEFAULT 0)""",
    # A device's pushes (server_stub/pushlog.py, docs/protocol.md §6.4): the highest seq it has
    # confirmed holding the answer to, and which write each change it sent above that was (one row
    # per push: a JSON list of [seq, "collection/id@stamp"]), so that a change sent again can be
    # told from a different change under the same seq (a store restored from an older copy).
    """CREATE TABLE IF NOT EXISTS push_marks (device_id TEXT PRIMARY KEY, confirmed BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS push_log (
        device_id TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, writes TEXT NOT NULL,
        PRIMARY KEY (device_id, first_seq))""",
    """CREATE TABLE IF NOT EXISTS nonces (
        device_id TEXT NOT NULL, nonce TEXT NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (device_id, nonce))""",
    "CREATE INDEX IF NOT EXISTS nonces_age ON nonces (at_ms)",
    """CREATE TABLE IF NOT EXISTS grid_state (
        grid TEXT PRIMARY KEY, seq BIGINT NOT NULL DEFAULT 0, checksum BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS records (
        collection TEXT NOT NULL, id TEXT NOT NULL, grid TEXT NOT NULL, server_seq BIGINT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0, digest BIGINT NOT NULL, body TEXT NOT NULL, updated_ms BIGINT NOT NULL,
        PRIMARY KEY (collection, id))""",
    "CREATE INDEX IF NOT EXISTS records_pull ON records (grid, server_seq)",
    """CREATE TABLE IF NOT EXISTS departures (
        grid TEXT NOT NULL, server_seq BIGINT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
        PRIMARY KEY (grid, server_seq))""",
    """CREATE TABLE IF NOT EXISTS rejections (
        device_id TEXT NOT NULL, seq BIGINT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
        code TEXT NOT NULL, message TEXT NOT NULL, field TEXT, created_ms BIGINT NOT NULL,
        PRIMARY KEY (device_id, seq))""",
    """CREATE TABLE IF NOT EXISTS audit_log (
        n BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        object TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS server_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    # Which records refer to which attachment (content hash), kept with every record write
    # (server_stub/attachments.py): a device reaches a hash only through a record of its grids.
    """CREATE TABLE IF NOT EXISTS attachment_refs (
        hash TEXT NOT NULL, collection TEXT NOT NULL, record_id TEXT NOT NULL, grid TEXT NOT NULL,
        PRIMARY KEY (hash, collection, record_id))""",
    "CREATE INDEX IF NOT EXISTS attachment_refs_record ON attachment_refs (collection, record_id)",
    # Jobs and compaction (server_stub/jobs.py, server_stub/compaction.py).
    """CREATE TABLE IF NOT EXISTS device_cursors (
        device_id TEXT NOT NULL, grid TEXT NOT NULL, seq BIGINT NOT NULL, snapshot_mark BIGINT NOT NULL DEFAULT 0,
        updated_ms BIGINT NOT NULL, PRIMARY KEY (device_id, grid))""",
    """CREATE TABLE IF NOT EXISTS compaction_marks (grid TEXT PRIMARY KEY, below BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS coverage (
        grid TEXT NOT NULL, worker_id TEXT NOT NULL, households INTEGER NOT NULL, visited INTEGER NOT NULL,
        visits INTEGER NOT NULL, days INTEGER NOT NULL, computed_ms BIGINT NOT NULL, PRIMARY KEY (grid, worker_id))""",
    """CREATE TABLE IF NOT EXISTS job_runs (
        name TEXT PRIMARY KEY, started_ms BIGINT NOT NULL, finished_ms BIGINT NOT NULL, result TEXT NOT NULL)""",
    # The web console (server_stub/accounts.py): sessions by the hash of their id, sign-in failures.
    """CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY, worker_id TEXT NOT NULL, csrf TEXT NOT NULL, created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS signin_failures (worker_id TEXT NOT NULL, at_ms BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS signin_failures_worker ON signin_failures (worker_id, at_ms)",
]


class Tx:
    """One open transaction.  ``?`` placeholders work on both backends."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cur = cursor
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "Tx":
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        self._cur.execute(sql, tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        self._cur.executemany(sql, [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row = self._cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return [tuple(r) for r in self._cur.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def for_update(self) -> str:
        """Row-lock suffix for SELECT (SQLite already holds the write lock)."""
        return " FOR UPDATE" if self.dialect == "postgresql" else ""


class Database:
    """A server database with a small pool of connections.

    A transaction takes a free connection (opening one when none is free) and gives it back
    when it ends, so the number of connections follows the number of transactions running at
    once, not the number of threads that ever ran one (Starlette's worker threads come and go).
    A transaction opened inside another on the same thread shares its connection.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self._path = url[len("sqlite:///"):]
            if not self._path:
                raise ValueError("sqlite URL needs a path: sqlite:///district.db")
        elif url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
        else:
            raise ValueError(f"unsupported database URL {url!r}; use sqlite:///path or postgresql://...")
        self._local = threading.local()
        self._all: list[Any] = []
        self._free: list[Any] = []
        self._lock = threading.Lock()
        # SQLite writers queue here (a thread lock, then an flock shared by every process on the file)
        # instead of in SQLite's busy handler, which polls with sleeps of up to 100 ms: under load
        # some writers lost that race again and again and waited seconds.
        self._write_lock = threading.Lock()
        self._write_fd: int | None = None

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
            return conn
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        held = getattr(self._local, "conn", None)
        if held is not None:  # nested: the outer transaction's connection
            yield held
            return
        with self._lock:
            conn = self._free.pop() if self._free else None
        if conn is None:
            conn = self._open()
            with self._lock:
                self._all.append(conn)
        self._local.conn = conn
        try:
            yield conn
        finally:
            self._local.conn = None
            broken = self.dialect == "postgresql" and (conn.closed or conn.broken)
            with self._lock:
                if broken:
                    self._all.remove(conn)
                elif conn in self._all:  # not closed by close() meanwhile
                    self._free.append(conn)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A serialisable-enough write transaction: SQLite takes the write lock
        up front (BEGIN IMMEDIATE); PostgreSQL relies on row locks (FOR UPDATE
        on the per-grid counter and the device row)."""
        with self._connection() as conn:
            if self.dialect == "sqlite":
                cur = conn.cursor()
                with self._writer(nested=conn.in_transaction):
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        yield Tx(cur, "sqlite")
                    except BaseException:
                        cur.execute("ROLLBACK")
                        raise
                    cur.execute("COMMIT")
            else:
                with conn.transaction():
                    with conn.cursor() as cur:
                        yield Tx(cur, "postgresql")

    @contextmanager
    def _writer(self, nested: bool) -> Iterator[None]:
        """Hold the SQLite write queue: this process's writers one at a time, then other processes'."""
        if nested:
            yield
            return
        with self._write_lock:
            if self._write_fd is None:
                try:
                    self._write_fd = os.open(self._path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
                except OSError:
                    self._write_fd = -1  # a read-only folder: SQLite's busy handler alone
            fd = self._write_fd
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def read_transaction(self) -> Iterator[Tx]:
        """A read-only transaction that sees one snapshot of the database from its first read to its end.

        SQLite: a deferred ``BEGIN`` (no write lock: readers never queue behind writers or each
        other); in WAL mode the snapshot is fixed by the first SELECT.  PostgreSQL: ``BEGIN
        ISOLATION LEVEL REPEATABLE READ READ ONLY`` in one statement.  Either way a per-grid
        counter and the rows read after it come from the same committed state.
        """
        with self._connection() as conn:
            if self.dialect == "sqlite":
                cur = conn.cursor()
                if conn.in_transaction:  # nested in a write transaction: read its state
                    yield Tx(cur, "sqlite")
                    return
                cur.execute("BEGIN")
                try:
                    yield Tx(cur, "sqlite")
                finally:
                    cur.execute("COMMIT")
            else:
                import psycopg

                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with conn.transaction(), conn.cursor() as cur:  # nested: a savepoint
                        yield Tx(cur, "postgresql")
                    return
                conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        yield Tx(cur, "postgresql")
                finally:
                    if not conn.closed:  # a broken (so closed) connection is dropped by the pool
                        conn.isolation_level, conn.read_only = None, None

    def create_schema(self) -> None:
        with self.transaction() as tx:
            for stmt in SCHEMA:
                tx.execute(stmt)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self._all.clear()
            self._free.clear()
        with self._write_lock:
            if self._write_fd is not None and self._write_fd >= 0:
                os.close(self._write_fd)
            self._write_fd = None
        self._local = threading.local()


def connect(url: str) -> Database:
    """Open (and create if needed) the server database at ``url``."""
    db = Database(url)
    db.create_schema()
    return db
