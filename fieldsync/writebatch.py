"""The rows one transaction writes for records, flushed together.

Saving a record touches three tables (``records``, ``search``, ``outbox``);
a batch collects the rows of every record written in one transaction and
writes each table with a single ``executemany``, and the clock once.  Local
writes (``put``/``delete``) and server versions the device adopts with
pending changes both go through :meth:`WriteBatch.save`, so there is one
way a record reaches the disk.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Mapping

from .clock import HybridClock
from .crypto import Keyring
from .merge import DELETED
from .protocol import dumps
from .schema import Kind, normalise

__all__ = ["WriteBatch"]

Wire = list  # [value, stamp, base]


class WriteBatch:
    def __init__(self, keys: Keyring, clock: HybridClock) -> None:
        self._keys = keys
        self._clock = clock
        self._records: list[tuple[Any, ...]] = []
        self._unindex: list[tuple[str, str, str]] = []
        self._tokens: list[tuple[str, str, bytes, str]] = []
        self._outbox: list[tuple[Any, ...]] = []

    def save(self, kind: Kind, rid: str, grid: str, state: Mapping[str, Wire], writes: Mapping[str, Wire],
             *, outbox: bool, is_new: bool) -> None:
        """Queue a record's whole new ``state``; ``writes`` are the fields that changed.

        Search tokens are rewritten only for changed searchable fields; a local
        write also queues its outbox entry (the writes, sealed).
        """
        collection = kind.name
        deleted = 1 if state.get(DELETED, (False,))[0] else 0
        newest = max(w[1] for w in state.values()) if state else self._clock.last.encode()
        body = dumps(state)
        self._records.append((collection, rid, grid, deleted, newest, self._keys.seal(body, collection, rid)))
        search = kind.search_fields()
        touched = list(search) if DELETED in writes else [f for f in search if f in writes]
        if not is_new:
            self._unindex.extend((collection, rid, f) for f in touched)
        if not deleted:
            for fname in touched:
                value = state.get(fname, (None,))[0]
                if isinstance(value, str) and value:
                    token = self._keys.blind_token(collection, fname, normalise(search[fname], value))
                    self._tokens.append((collection, fname, token, rid))
        if outbox:
            sealed = self._keys.seal(body if writes is state else dumps(writes), "_outbox", collection, rid)
            self._outbox.append((collection, rid, grid, int(time.time() * 1000), sealed))

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write everything queued (inside the caller's transaction) and the clock."""
        if self._unindex:
            conn.executemany("DELETE FROM search WHERE collection = ? AND id = ? AND field = ?", self._unindex)
        if self._records:
            # An upsert keeps the record's server digest: a local write does not change what the server has.
            conn.executemany(
                "INSERT INTO records (collection, id, grid, deleted, stamp, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (collection, id) DO UPDATE SET grid = excluded.grid, deleted = excluded.deleted, "
                "stamp = excluded.stamp, body = excluded.body",
                self._records,
            )
        if self._tokens:
            conn.executemany("INSERT INTO search (collection, field, token, id) VALUES (?, ?, ?, ?)", self._tokens)
        if self._outbox:
            conn.executemany("INSERT INTO outbox (collection, id, grid, created_ms, body) VALUES (?, ?, ?, ?, ?)",
                             self._outbox)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (self._clock.last.encode(),))
        self._records.clear()
        self._unindex.clear()
        self._tokens.clear()
        self._outbox.clear()
