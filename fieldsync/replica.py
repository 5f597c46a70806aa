"""The device side of sync, as part of :class:`fieldsync.Store`.

The rule for data from the server: for every field WITHOUT a pending local
change, the device adopts the server's write as it is (the server is the
authority on acknowledged state, including stamps it clamped); for a field
WITH a pending local change the two writes are merged with
:func:`fieldsync.merge.merge_field`, so unsynced work is never discarded.
Each pulled page, its cursors and any scope change commit in one transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import Stamp
from .merge import DELETED, FieldWrite, merge_field
from .protocol import N_BUCKETS, PulledRecord, PullResponse, Rejection, bucket_of, record_digest
from .schema import normalise
from .writebatch import WriteBatch

__all__ = ["PageResult", "RejectedChange"]


@dataclass(frozen=True)
class PageResult:
    applied: int
    removed: int
    grids_left: list[str]
    grids_entered: list[str]


@dataclass(frozen=True)
class RejectedChange:
    """A change the server refused: what was sent, and why.  The worker can fix and resubmit."""

    seq: int
    collection: str
    id: str
    code: str
    message: str
    field: str | None
    values: dict[str, Any]
    created_ms: int


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ReplicaMixin:
    """Sync bookkeeping of the device store (cursors, acks, rejections, pages, repair)."""

    if TYPE_CHECKING:  # provided by Store
        import sqlite3
        import threading
        from contextlib import AbstractContextManager

        from .clock import HybridClock
        from .crypto import Keyring
        from .schema import Kind, Registry

        _conn: sqlite3.Connection
        _lock: threading.RLock
        _keys: Keyring
        registry: Registry
        clock: HybridClock

        def atomic(self) -> AbstractContextManager[Any]: ...
        def _meta(self, key: str) -> Any: ...
        def _row(self, collection: str, rid: str) -> tuple[str, int, dict[str, list[Any]]] | None: ...

    # -- state the client reads ---------------------------------------------
    def cursors(self) -> dict[str, int]:
        with self._lock:
            return {g: int(s) for g, s in self._conn.execute("SELECT grid, server_seq FROM cursors").fetchall()}

    def grids(self) -> list[str]:
        """The grids this device holds (its scope as of the last pull)."""
        return sorted(json.loads(self._meta("grids") or "[]"))

    def _pending_fields(self, collection: str, rid: str) -> set[str]:
        rows = self._conn.execute(
            "SELECT body FROM outbox WHERE collection = ? AND id = ?", (collection, rid)
        ).fetchall()
        fields: set[str] = set()
        for (body,) in rows:
            fields.update(json.loads(self._keys.open(body, "_outbox", collection, rid)))
        return fields

    def _has_pending(self, collection: str, rid: str) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM outbox WHERE collection = ? AND id = ? LIMIT 1", (collection, rid)
        ).fetchone() is not None

    # -- push results -----------------------------------------------------------
    def apply_push_result(self, acked_seq: int, rejections: list[Rejection]) -> int:
        """Record the server's answer to a push in one transaction.

        Each rejected change is kept (sealed) with its reason for the worker
        to review; its fields are no longer pending, and the record is marked
        stale so the next integrity check fetches the server's version back.
        Outbox entries up to ``acked_seq`` leave.  Returns how many left.
        """
        with self.atomic():
            for rej in rejections:
                row = self._conn.execute(
                    "SELECT collection, id, body FROM outbox WHERE seq = ?", (rej.seq,)
                ).fetchone()
                if row is None:
                    continue  # already recorded by an earlier answer
                collection, rid, body = row
                writes = json.loads(self._keys.open(body, "_outbox", collection, rid))
                values = {k: w[0] for k, w in writes.items()}
                self._conn.execute(
                    "INSERT OR REPLACE INTO rejections (seq, collection, id, code, message, field, created_ms, body) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rej.seq, collection, rid, rej.code, rej.message[:500], rej.field, int(time.time() * 1000),
                     self._keys.seal(_dumps(values), "_rejection", str(rej.seq))),
                )
                self._conn.execute(
                    "INSERT OR IGNORE INTO stale (collection, id, grid) SELECT collection, id, grid FROM records "
                    "WHERE collection = ? AND id = ?", (collection, rid),
                )
            cur = self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (acked_seq,))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('push_confirmed', ?)",
                               (max(acked_seq, self._push_confirmed()),))
            return cur.rowcount

    def push_confirmed(self) -> int:
        """The highest seq whose push answer this store recorded (sent as ``confirmed_seq``)."""
        with self._lock:
            return self._push_confirmed()

    def _push_confirmed(self) -> int:
        value = self._meta("push_confirmed")
        return int(value) if value is not None else 0

    def renumber_outbox(self, after: int) -> int:
        """Number the pending changes after seq ``after``, in their order, and every later one
        after them; returns how many moved.

        For a store restored from an older copy, whose seqs the server already used for other
        changes (``outbox_behind``, docs/protocol.md §6.4): ``after`` is the server's
        ``last_seq`` for this device.  A change sent before under its old seq is then applied
        again, which changes nothing (the same writes, the same stamps).
        """
        with self.atomic():
            low = self._conn.execute("SELECT min(seq) FROM outbox").fetchone()[0]
            moved = 0
            if low is not None and low <= after:
                self._conn.execute("UPDATE outbox SET seq = -seq")  # two steps: no seq is ever taken twice
                moved = self._conn.execute("UPDATE outbox SET seq = ? - seq", (after + 1 - low,)).rowcount
            top = max(after, self._conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])
            if self._conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'outbox'",
                                  (top,)).rowcount == 0:
                self._conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (top,))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('push_confirmed', ?)", (after,))
            return moved

    def stale_buckets(self) -> dict[str, set[int]]:
        """Grid -> repair buckets holding records to fetch back from the server after a rejection.

        Stale records of grids outside the scope, with nothing pending, are
        simply removed here.
        """
        out: dict[str, set[int]] = {}
        scope = set(self.grids())
        with self.atomic():
            for c, rid, grid in self._conn.execute("SELECT collection, id, grid FROM stale").fetchall():
                if grid not in scope:
                    self._drop_if_clean(c, rid)
                    self._conn.execute("DELETE FROM stale WHERE collection = ? AND id = ?", (c, rid))
                else:
                    out.setdefault(grid, set()).add(bucket_of(c, rid))
        return out

    def rejections(self, include_dismissed: bool = False) -> list[RejectedChange]:
        """Changes the server refused, newest last, with the values that were sent."""
        sql = "SELECT seq, collection, id, code, message, field, created_ms, body FROM rejections"
        if not include_dismissed:
            sql += " WHERE dismissed = 0"
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq").fetchall()
        return [
            RejectedChange(seq, c, rid, code, msg, fld, json.loads(self._keys.open(body, "_rejection", str(seq))), ms)
            for seq, c, rid, code, msg, fld, ms, body in rows
        ]

    def dismiss_rejection(self, seq: int) -> None:
        """Mark a rejection as dealt with (after the worker fixed and resubmitted, or gave up)."""
        with self.atomic():
            self._conn.execute("UPDATE rejections SET dismissed = 1 WHERE seq = ?", (seq,))

    # -- pulled pages ---------------------------------------------------------------
    def apply_pull(self, page: PullResponse) -> PageResult:
        """Apply one validated page, its cursors and scope changes atomically."""
        removed = 0
        before = set(self.grids())
        now = set(page.grids)
        if not page.changes and before == now and self.cursors() == page.cursors:
            return PageResult(0, 0, [], [])  # nothing new: no write, no fsync
        with self.atomic():
            # Every grid the device holds records of, not only the stored scope: records saved in a
            # grid before the first complete pull, whose worker lost it meanwhile, must go too.
            held = self._held_grids()
            left = sorted((before | held) - now)
            entered = sorted(now - before)
            for grid in left:
                removed += self._purge_grid(grid)
            applied, dropped = self._adopt_all(page.changes)
            removed += dropped
            self._conn.executemany("INSERT OR REPLACE INTO cursors (grid, server_seq) VALUES (?, ?)",
                                   list(page.cursors.items()))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('grids', ?)", (json.dumps(sorted(now)),))
        return PageResult(applied, removed, left, entered)

    def _held_grids(self) -> set[str]:
        """The grids this device holds records of: one index seek per grid (a skip scan over
        ``records_grid_digest``), not a read of every record."""
        rows = self._conn.execute(
            "WITH RECURSIVE g(grid) AS (SELECT min(grid) FROM records UNION ALL "
            "SELECT (SELECT min(grid) FROM records WHERE grid > g.grid) FROM g WHERE g.grid IS NOT NULL) "
            "SELECT grid FROM g WHERE grid IS NOT NULL").fetchall()
        return {g for (g,) in rows}

    def _purge_grid(self, grid: str) -> int:
        """Remove a grid that left the scope, keeping records with unsynced changes."""
        rows = self._conn.execute("SELECT collection, id FROM records WHERE grid = ?", (grid,)).fetchall()
        n = sum(self._drop_if_clean(c, rid) for c, rid in rows)
        self._conn.execute("DELETE FROM cursors WHERE grid = ?", (grid,))
        return n

    def _drop_if_clean(self, collection: str, rid: str, only_in_grid: str | None = None) -> int:
        """Remove a record that has no pending local change; returns 1 if removed."""
        if self._has_pending(collection, rid):
            return 0
        row = self._conn.execute("SELECT grid FROM records WHERE collection = ? AND id = ?", (collection, rid)).fetchone()
        if row is None or (only_in_grid is not None and row[0] != only_in_grid):
            return 0
        # The grid's content changed locally: its remembered checksum match no longer holds.
        self._conn.execute("DELETE FROM meta WHERE key = ?", (f"app:verified:{row[0]}",))
        self._conn.execute("DELETE FROM stale WHERE collection = ? AND id = ?", (collection, rid))
        self._conn.execute("DELETE FROM records WHERE collection = ? AND id = ?", (collection, rid))
        self._conn.execute("DELETE FROM search WHERE collection = ? AND id = ?", (collection, rid))
        return 1

    def _adopt_all(self, records: list[PulledRecord]) -> tuple[int, int]:
        """Adopt the server's versions (inside the caller's transaction).  Returns (applied, removed).

        Records with no pending local change (nearly all) take the fast path:
        no local row is read or decrypted; rows, digests and search tokens
        are written in batches.  Records with pending changes are merged.
        """
        pending = {(c, rid) for c, rid in self._conn.execute("SELECT DISTINCT collection, id FROM outbox")}
        rows: list[tuple[Any, ...]] = []
        tokens: list[tuple[str, str, bytes, str]] = []
        reindex: list[tuple[str, str]] = []
        applied = removed = 0
        newest = ""
        for rec in records:
            key = (rec.collection, rec.id)
            if rec.state is None:
                # Only if it is still held under the grid it left: the record
                # may already have arrived under its new grid on an earlier page.
                removed += self._drop_if_clean(*key, only_in_grid=rec.grid)
                continue
            applied += 1
            state = rec.state
            stamp = max(w[1] for w in state.values())
            newest = max(newest, stamp)
            if key in pending:
                self._adopt_pending(rec)
                continue
            kind = self.registry.get(rec.collection) if rec.collection in self.registry else None
            deleted = 1 if state.get(DELETED, (False,))[0] else 0
            rows.append((rec.collection, rec.id, rec.grid, deleted, stamp,
                         self._keys.seal(_dumps(state), rec.collection, rec.id),
                         record_digest(rec.collection, rec.id, rec.stamps())))
            reindex.append(key)
            if kind is not None and not deleted:
                for fname, how in kind.search_fields().items():
                    value = state.get(fname, (None,))[0]
                    if isinstance(value, str) and value:
                        tokens.append((rec.collection, fname,
                                       self._keys.blind_token(rec.collection, fname, normalise(how, value)), rec.id))
        held = self._held(reindex)
        self._conn.executemany("DELETE FROM search WHERE collection = ? AND id = ?", [k for k in reindex if k in held])
        self._conn.executemany(
            "INSERT OR REPLACE INTO records (collection, id, grid, deleted, stamp, body, server_digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self._conn.executemany("INSERT INTO search (collection, field, token, id) VALUES (?, ?, ?, ?)", tokens)
        if newest:
            self.clock.observe(Stamp.decode(newest), clamp=True)
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (self.clock.last.encode(),))
        return applied, removed

    def _held(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these records this device already holds (a first pull holds none: no index to clear)."""
        held: set[tuple[str, str]] = set()
        by_collection: dict[str, list[str]] = {}
        for collection, rid in keys:
            by_collection.setdefault(collection, []).append(rid)
        for collection, ids in by_collection.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                rows = self._conn.execute(
                    f"SELECT id FROM records WHERE collection = ? AND id IN ({','.join('?' * len(chunk))})",
                    (collection, *chunk)).fetchall()
                held.update((collection, r[0]) for r in rows)
        return held

    def _adopt_pending(self, rec: PulledRecord) -> None:
        """Adopt the server's version of a record that has unsynced local changes: merge those fields."""
        assert rec.state is not None
        collection, rid = rec.collection, rec.id
        found = self._row(collection, rid)
        local: dict[str, list[Any]] = found[2] if found else {}
        state: dict[str, list[Any]] = dict(rec.state)
        for name in self._pending_fields(collection, rid):
            mine = local.get(name)
            if mine is None:
                continue
            theirs = rec.state.get(name)
            if theirs is None:
                state[name] = mine
            else:
                winner, _ = merge_field(name, FieldWrite.from_wire(mine), FieldWrite.from_wire(theirs))
                state[name] = winner.to_wire()
        kind = self.registry.get(collection) if collection in self.registry else None
        grid = rec.grid
        if kind is not None:
            value = state.get(kind.grid_field, [None])[0] if kind.grid_field != "id" else rid
            grid = value if isinstance(value, str) and value else grid
            writes = {k: v for k, v in state.items() if local.get(k) != v}
            batch = WriteBatch(self._keys, self.clock)
            batch.save(kind, rid, grid, state, writes, outbox=False, is_new=found is None)
            batch.flush(self._conn)
        else:  # a kind this app does not know (a newer server): keep it as it is
            deleted = 1 if state.get(DELETED, [False])[0] else 0
            self._conn.execute(
                "INSERT OR REPLACE INTO records (collection, id, grid, deleted, stamp, body) VALUES (?, ?, ?, ?, ?, ?)",
                (collection, rid, grid, deleted, max(w[1] for w in state.values()),
                 self._keys.seal(_dumps(state), collection, rid)),
            )
        self._conn.execute(
            "UPDATE records SET server_digest = ? WHERE collection = ? AND id = ?",
            (record_digest(collection, rid, rec.stamps()), collection, rid),
        )
        for gone in set(local) - set(state):
            self._conn.execute("DELETE FROM search WHERE collection = ? AND id = ? AND field = ?", (collection, rid, gone))

    # -- integrity ------------------------------------------------------------------
    def grid_checksum(self, grid: str) -> int:
        """XOR of the server digests this device holds for ``grid`` (compare with the server's)."""
        out = 0
        with self._lock:
            for (d,) in self._conn.execute(
                    "SELECT server_digest FROM records WHERE grid = ? AND server_digest IS NOT NULL", (grid,)):
                out ^= int(d)
        return out

    def bucket_digests(self, grid: str) -> list[int]:
        buckets = [0] * N_BUCKETS
        with self._lock:
            for c, rid, d in self._conn.execute(
                    "SELECT collection, id, server_digest FROM records WHERE grid = ? AND server_digest IS NOT NULL",
                    (grid,)):
                buckets[bucket_of(c, rid)] ^= int(d)
        return buckets

    def apply_repair(self, grid: str, buckets: set[int], records: list[PulledRecord]) -> tuple[int, int]:
        """Replace the given buckets of ``grid`` with the server's records, keeping unsynced changes.

        Local records in those buckets that the server does not have, and that
        have no pending change, are removed.  Returns (adopted, removed).
        """
        keep = {(c.collection, c.id) for c in records}
        removed = 0
        with self.atomic():
            for c, rid in self._conn.execute(
                "SELECT collection, id FROM records WHERE grid = ?", (grid,)
            ).fetchall():
                if bucket_of(c, rid) in buckets and (c, rid) not in keep:
                    removed += self._drop_if_clean(c, rid)
            self._adopt_all(records)
            for c, rid in self._conn.execute("SELECT collection, id FROM stale WHERE grid = ?", (grid,)).fetchall():
                if bucket_of(c, rid) in buckets and not self._has_pending(c, rid):
                    self._conn.execute("DELETE FROM stale WHERE collection = ? AND id = ?", (c, rid))
        return len(records), removed
