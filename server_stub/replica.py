"""The server's copy of every grid: applying writes, paging changes out, repair.

All writes — a device's push, a command-centre action, a job — go through
:func:`apply_writes`, which merges with :mod:`fieldsync.merge` (the same code
the devices run), validates the merged record, checks scope and workflow,
gives the change the next ``server_seq`` of its grid (the per-grid counter
row is locked inside the same transaction, so sequence numbers commit in
order and a reader never sees a gap), keeps the grid checksum current and
records concurrent overwrites in the ``conflicts`` collection.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from fieldsync.clock import HybridClock, Stamp
from fieldsync.errors import UnknownKindError, ValidationError
from fieldsync.merge import DELETED, Conflict, FieldWrite, merge_states
from fieldsync.protocol import N_BUCKETS, bucket_of, record_digest
from fieldsync.schema import Registry
from fieldsync.workflow import WORKER_PROTECTED_FIELDS, transition_allowed

from .attachments import index_record
from .db import Tx

__all__ = ["Refused", "Actor", "GridCounters", "apply_writes", "load_state", "page", "encode_rows",
           "bucket_digests", "bucket_records"]


class Refused(Exception):
    """A change the server will not apply; becomes a rejection with ``code``."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class Actor:
    """Who is writing: a worker's device (scoped to ``grids``) or a server role."""

    id: str
    role: str  # worker | command | department | job | admin (imports: no workflow checks)
    grids: frozenset[str] | None = None  # None: every grid (server roles)

    def may_touch(self, grid: str) -> bool:
        return self.grids is None or grid in self.grids


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class GridCounters:
    """The per-grid counter rows touched by one transaction.

    The first use of a grid locks its row (FOR UPDATE on PostgreSQL; SQLite
    holds the write lock already); later changes in the same transaction
    count in memory and :meth:`flush` writes every row back once, before the
    commit.  So sequence numbers still commit in order and never leave a gap.
    """

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self._rows: dict[str, list[int]] = {}  # grid -> [seq, checksum]
        # Record rows this transaction has locked (None: no such record) and the upserts it
        # will write at flush(): a push reads its records with one SELECT and writes them with
        # one executemany, instead of two statements (two round trips on PostgreSQL) per change.
        self._records: dict[tuple[str, str], tuple[str, str, int] | None] = {}
        self._pending: dict[tuple[str, str], tuple[Any, ...]] = {}

    def _load(self, grid: str) -> list[int]:
        row = self._rows.get(grid)
        if row is None:
            tx = self.tx
            found = tx.one(f"SELECT seq, checksum FROM grid_state WHERE grid = ?{tx.for_update()}", (grid,))
            if found is None:
                tx.execute("INSERT INTO grid_state (grid, seq, checksum) VALUES (?, 0, 0) ON CONFLICT (grid) DO NOTHING",
                           (grid,))
                found = tx.one(f"SELECT seq, checksum FROM grid_state WHERE grid = ?{tx.for_update()}", (grid,))
                assert found is not None
            row = self._rows[grid] = [int(found[0]), int(found[1])]
        return row

    def lock(self, grids: Iterable[str]) -> None:
        """Lock these grids' counters now, in sorted order.

        Every writer takes grid counters before record rows and in the same
        order, so two transactions can never wait on each other in a cycle
        (PostgreSQL would abort one of them as a deadlock).
        """
        for grid in sorted(set(grids)):
            self._load(grid)

    def next(self, grid: str, checksum_delta: int = 0) -> int:
        """The grid's next server_seq, folding ``checksum_delta`` into its checksum."""
        row = self._load(grid)
        row[0] += 1
        row[1] ^= checksum_delta
        return row[0]

    def prefetch(self, keys: Iterable[tuple[str, str]]) -> None:
        """Lock and read these records (collection, id) now, with one SELECT per 500, in sorted order.

        Called after :meth:`lock` (grid counters first, then record rows, always in the same
        order), so concurrent writers cannot deadlock.
        """
        tx = self.tx
        wanted = sorted(set(keys) - self._records.keys())
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            if tx.dialect == "postgresql":
                found = tx.all("SELECT collection, id, grid, body, digest FROM records WHERE (collection, id) IN "
                               "(SELECT * FROM unnest(%b::text[], %b::text[])) ORDER BY collection, id FOR UPDATE",
                               ([c for c, _ in part], [r for _, r in part]))
            else:  # SQLite scans the table for a row-value IN; per collection it searches the primary key
                found = []
                for collection in sorted({c for c, _ in part}):
                    ids = [r for c, r in part if c == collection]
                    found += tx.all("SELECT collection, id, grid, body, digest FROM records WHERE collection = ? "
                                    f"AND id IN ({', '.join(['?'] * len(ids))})", [collection, *ids])
            for key in part:
                self._records[key] = None
            for collection, rid, grid, body, digest in found:
                self._records[(collection, rid)] = (grid, body, int(digest))

    def record(self, collection: str, rid: str) -> tuple[str, str, int] | None:
        """The record's (grid, body, digest) as this transaction last wrote or read it, locked."""
        key = (collection, rid)
        if key not in self._records:
            tx = self.tx
            row = tx.one(f"SELECT grid, body, digest FROM records WHERE collection = ? AND id = ?{tx.for_update()}",
                         key)
            self._records[key] = (row[0], row[1], int(row[2])) if row is not None else None
        return self._records[key]

    def stage(self, collection: str, rid: str, grid: str, seq: int, deleted: int, digest: int, body: str) -> None:
        """A record upsert, written at :meth:`flush` (later reads in this transaction see it)."""
        self._records[(collection, rid)] = (grid, body, digest)
        self._pending.pop((collection, rid), None)  # the newest write of a record goes last
        self._pending[(collection, rid)] = (collection, rid, grid, seq, deleted, digest, body, _now_ms())

    def flush(self) -> None:
        tx = self.tx
        if self._pending:
            upsert = (" ON CONFLICT (collection, id) DO UPDATE SET grid = excluded.grid, "
                      "server_seq = excluded.server_seq, deleted = excluded.deleted, digest = excluded.digest, "
                      "body = excluded.body, updated_ms = excluded.updated_ms")
            columns = "INSERT INTO records (collection, id, grid, server_seq, deleted, digest, body, updated_ms) "
            rows = list(self._pending.values())
            if tx.dialect == "postgresql":
                # One statement, the rows as arrays (each key appears once), sent in binary (%b): the
                # text form escapes every quote of the JSON bodies with a regular expression in psycopg.
                tx.execute(columns + "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], "
                           "%b::int[], %b::bigint[], %b::text[], %b::bigint[])" + upsert, [list(c) for c in zip(*rows)])
            else:
                tx.executemany(columns + "VALUES (?, ?, ?, ?, ?, ?, ?, ?)" + upsert, rows)
            self._pending.clear()
        grids = [(seq, checksum, grid) for grid, (seq, checksum) in self._rows.items()]
        if len(grids) == 1:
            tx.execute("UPDATE grid_state SET seq = ?, checksum = ? WHERE grid = ?", grids[0])
        else:
            tx.executemany("UPDATE grid_state SET seq = ?, checksum = ? WHERE grid = ?", grids)


Wire = list  # [value, stamp, base]: a field write as stored and sent


def load_state(body: str) -> dict[str, FieldWrite]:
    return {k: FieldWrite.from_wire(v) for k, v in json.loads(body).items()}


def _decoded(state: Mapping[str, Wire]) -> dict[str, FieldWrite]:
    return {k: FieldWrite.from_wire(w) for k, w in state.items()}


def _clamped(clock: HybridClock, writes: Mapping[str, Wire]) -> dict[str, Wire]:
    """The writes with stamps from the future clamped to the drift bound; the clock observes them.

    Encoded stamps order like the stamps themselves, so the bound is checked
    on the text; only a stamp beyond it is decoded.  Each distinct stamp
    beyond the bound gets its own clamped stamp from the server's clock (in
    stamp order), so the order of one writer's writes survives clamping.
    """
    limit_hex = f"{clock.wall() + clock.max_drift_ms:012x}"
    newest = max(w[1] for w in writes.values())
    if newest[:12] <= limit_hex:  # the usual case: nothing from the future
        clock.observe(Stamp.decode(newest), clamp=True)
        return dict(writes)
    future = sorted({w[1] for w in writes.values() if w[1][:12] > limit_hex})
    moved = {s: clock.observe(Stamp.decode(s), clamp=True).encode() for s in future}
    out: dict[str, Wire] = {}
    newest = ""
    for name, w in writes.items():
        stamp = moved.get(w[1])
        if stamp is None:
            newest = max(newest, w[1])
            out[name] = w
        else:
            out[name] = [w[0], stamp, w[2]]
    if newest:
        clock.observe(Stamp.decode(newest), clamp=True)
    return out


def apply_writes(
    counters: GridCounters,
    registry: Registry,
    clock: HybridClock,
    actor: Actor,
    collection: str,
    rid: str,
    writes: Mapping[str, Wire],
) -> list[Conflict]:
    """Merge ``writes`` (field -> [value, stamp, base]) into record ``collection/rid``.

    Raises :class:`Refused`; nothing is written when it does.  A new record
    takes the writes as they are; an existing one is merged with
    :func:`fieldsync.merge.merge_states`.  Returns the conflicts recorded.
    """
    try:
        kind = registry.get(collection)
    except UnknownKindError:
        raise Refused("unknown_kind", f"no record kind {collection!r} on this server") from None
    if collection == "conflicts" and actor.role == "worker" and set(writes) - {"status"}:
        other = sorted(set(writes) - {"status"})[0]
        raise Refused("field_not_allowed", "only the status of a conflict can be changed", other)
    row = counters.record(collection, rid)
    if row is not None and not actor.may_touch(row[0]):
        raise Refused("out_of_scope", "this record belongs to a grid you are not assigned to")
    # Clamp stamps from the future: a tablet with a wrong clock cannot win every conflict.
    incoming = _clamped(clock, writes)
    conflicts: list[Conflict] = []
    if row is None:
        old_grid, old_state, old_digest = None, {}, 0
        state: dict[str, Wire] = incoming
        changed = set(incoming)
    else:
        old_grid, old_state, old_digest = row[0], json.loads(row[1]), int(row[2])
        result = merge_states(_decoded(old_state), _decoded(incoming))
        state = {k: w.to_wire() for k, w in result.state.items()}
        changed, conflicts = result.changed, result.conflicts
    values = {k: w[0] for k, w in state.items() if k != DELETED}
    values["id"] = rid
    try:
        validated = kind.validate(values)
        new_grid = kind.grid_of(validated)
    except ValidationError as exc:
        raise Refused("validation_failed", str(exc), exc.field) from None
    if not actor.may_touch(new_grid):
        raise Refused("out_of_scope", f"grid {new_grid!r} is not assigned to you", kind.grid_field)
    if collection == "reports" and actor.role != "admin":
        _check_report(actor, old_state, state, changed)
    if collection == "reports" and "status" in changed and "timeline" not in writes:
        state = _with_timeline_step(state, actor, clock)
        changed = changed | {"timeline"}
    # A write that lost a field (an older stamp than the server's) is stored too, with a new
    # server_seq: its digest does not change, but its writer must pull the winning value back.
    lost = row is not None and any(state.get(k) != w for k, w in incoming.items())
    if changed or lost:
        _store(counters, collection, rid, state, old_grid, old_digest, new_grid)
    for conflict in conflicts:
        _record_conflict(counters, clock, collection, rid, new_grid, conflict)
    return conflicts


def _check_report(actor: Actor, old: Mapping[str, Wire], new: Mapping[str, Wire], changed: set[str]) -> None:
    if actor.role == "worker":
        for name in changed & WORKER_PROTECTED_FIELDS:
            raise Refused("field_not_allowed", f"reports.{name} is set by the command centre", name)
    if "status" in changed or not old:
        before = old["status"][0] if "status" in old else None
        after = new["status"][0] if "status" in new else None
        if after is None:
            raise Refused("validation_failed", "reports.status: is required", "status")
        if not transition_allowed(actor.role, before, after):
            raise Refused("transition_not_allowed",
                          f"a {actor.role} may not move a report from {before or 'new'} to {after}", "status")


def _with_timeline_step(state: Mapping[str, Wire], actor: Actor, clock: HybridClock) -> dict[str, Wire]:
    """The report's state with one more timeline step for its new status, written by the server.

    The server keeps the timeline so every move (a worker confirming, the
    command centre dispatching, a department resolving) is recorded once,
    with the server's time, whoever made it.
    """
    from datetime import datetime, timezone

    current = state.get("timeline")
    steps = list(current[0]) if current and isinstance(current[0], list) else []
    steps.append({"status": state["status"][0], "by": actor.id, "role": actor.role,
                  "at": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")})
    return {**state, "timeline": [steps, clock.now().encode(), current[1] if current else None]}


def _store(counters: GridCounters, collection: str, rid: str, state: Mapping[str, Wire],
           old_grid: str | None, old_digest: int, new_grid: str) -> None:
    tx = counters.tx
    digest = record_digest(collection, rid, {k: w[1] for k, w in state.items()})
    if old_grid is not None and old_grid != new_grid:
        # The record leaves its old grid: devices there get a departure.
        leave_seq = counters.next(old_grid, old_digest)
        tx.execute("INSERT INTO departures (grid, server_seq, collection, id) VALUES (?, ?, ?, ?)",
                   (old_grid, leave_seq, collection, rid))
        old_digest = 0
    seq = counters.next(new_grid, old_digest ^ digest)
    deleted = 1 if state.get(DELETED, (False,))[0] else 0
    counters.stage(collection, rid, new_grid, seq, deleted, digest,
                   json.dumps(state, ensure_ascii=False, separators=(",", ":")))
    index_record(tx, collection, rid, new_grid, state)  # the attachments it refers to follow the record


def _record_conflict(counters: GridCounters, clock: HybridClock, collection: str, rid: str,
                     grid: str, conflict: Conflict) -> None:
    cid = "c" + hashlib.sha256("|".join((collection, rid, *conflict.key())).encode()).hexdigest()[:31]
    if counters.record("conflicts", cid) is not None:
        return
    stamp = clock.now()
    values = {
        "grid_id": grid, "collection": collection, "record_id": rid, "field": conflict.field,
        "kept_value": conflict.winner.value, "kept_stamp": conflict.winner.stamp.encode(),
        "lost_value": conflict.loser.value, "lost_stamp": conflict.loser.stamp.encode(), "status": "open",
    }
    wire = stamp.encode()
    state = {k: [v, wire, None] for k, v in values.items() if v is not None}
    _store(counters, "conflicts", cid, state, None, 0, grid)


Row = tuple[str, int, str, str, "str | None"]  # grid, server_seq, collection, id, body (None: left)


def page(tx: Tx, grids: Iterable[str], cursors: Mapping[str, int], limit: int) -> tuple[list[Row], dict[str, int], dict[str, int], bool]:
    """Changes after each grid's cursor, oldest first, at most ``limit`` in all.

    Returns (rows, new cursors, checksums of the grids this page caught up
    on, more).  Rows carry the stored body text as it is: it is already the
    wire form, so a page is never decoded and re-encoded.  Each grid's rows
    stop at the counter read with its checksum, so the two always agree.
    """
    rows: list[Row] = []
    out_cursors: dict[str, int] = {}
    checksums: dict[str, int] = {}
    more = False
    for grid in sorted(grids):
        cursor = int(cursors.get(grid, 0))
        state = tx.one("SELECT seq, checksum FROM grid_state WHERE grid = ?", (grid,))
        top, checksum = (int(state[0]), int(state[1])) if state else (0, 0)
        room = limit - len(rows)
        found: list[tuple[Any, ...]] = []
        if room > 0 and cursor < top:
            found = tx.all(
                "SELECT server_seq, collection, id, body FROM records WHERE grid = ? AND server_seq > ? "
                "AND server_seq <= ? UNION ALL SELECT server_seq, collection, id, NULL FROM departures "
                "WHERE grid = ? AND server_seq > ? AND server_seq <= ? ORDER BY server_seq LIMIT ?",
                (grid, cursor, top, grid, cursor, top, room),
            )
        rows.extend((grid, int(seq), c, rid, body) for seq, c, rid, body in found)
        new_cursor = int(found[-1][0]) if found else cursor
        out_cursors[grid] = new_cursor
        if new_cursor >= top:
            checksums[grid] = checksum
        else:
            more = True
    return rows, out_cursors, checksums, more


def _q(text: str) -> str:
    """``json.dumps(text)``, without the call for the usual plain ASCII id."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def encode_rows(rows: Iterable[Row]) -> str:
    """A JSON array of pulled records, splicing each stored body in unchanged."""
    parts = []
    for grid, seq, collection, rid, body in rows:
        head = f'{{"collection":{_q(collection)},"id":{_q(rid)},"grid":{_q(grid)},"server_seq":{seq}'
        parts.append(head + (',"left":true}' if body is None else f',"fields":{body}}}'))
    return "[" + ",".join(parts) + "]"


def bucket_digests(tx: Tx, grid: str) -> tuple[int, list[int]]:
    """The grid's counter and the XOR of record digests in each repair bucket."""
    state = tx.one("SELECT seq FROM grid_state WHERE grid = ?", (grid,))
    buckets = [0] * N_BUCKETS
    for collection, rid, digest in tx.all("SELECT collection, id, digest FROM records WHERE grid = ?", (grid,)):
        buckets[bucket_of(collection, rid)] ^= int(digest)
    return (int(state[0]) if state else 0), buckets


def bucket_records(tx: Tx, grid: str, buckets: set[int]) -> tuple[int, list[Row]]:
    """Every record of the grid in the given buckets, with the grid counter."""
    state = tx.one("SELECT seq FROM grid_state WHERE grid = ?", (grid,))
    out: list[Row] = []
    for seq, collection, rid, body in tx.all(
        "SELECT server_seq, collection, id, body FROM records WHERE grid = ? ORDER BY server_seq", (grid,)
    ):
        if bucket_of(collection, rid) in buckets:
            out.append((grid, int(seq), collection, rid, body))
    return (int(state[0]) if state else 0), out
