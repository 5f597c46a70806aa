"""The district server's operations, independent of HTTP: :class:`District`.

The HTTP app (``server_stub.app``), the admin CLI and the jobs all call
these methods, so every path goes through the same scope rule, merge and
audit code.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl

from fieldsync.clock import HybridClock
from fieldsync.errors import ProtocolError
from fieldsync.merge import values_of
from fieldsync.protocol import (
    DEFAULT_PULL_LIMIT,
    MAX_ATTACHMENT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_PULL_LIMIT,
    MAX_PUSH_CHANGES,
    MIN_SCHEMA_VERSION,
    N_BUCKETS,
    Rejection,
    parse_change,
)
from fieldsync.schema import SCHEMA_VERSION, Registry, default_registry

from . import audit, auth, compaction, pushlog
from .attachments import (
    STALE_PARTIAL_MS,
    AttachmentStorage,
    DirectoryStorage,
    HashMismatch,
    OffsetMismatch,
    SizeMismatch,
    backfill_refs,
    default_folder,
    hashes_in_scope,
    is_content_hash,
)
from .auth import ApiError, Device
from .db import Database, Tx, connect
from .replica import (
    Actor,
    GridCounters,
    Refused,
    apply_writes,
    bucket_digests,
    bucket_records,
    encode_rows,
    load_state,
    page,
)

__all__ = ["District"]


_NODE_RE = re.compile(r"[A-Za-z0-9-]{1,40}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


# Integers the database stores: seqs and cursors are BIGINT, a device's schema_version an INTEGER.
MAX_SEQ = 2**63 - 1
MAX_SCHEMA_VERSION = 2**31 - 1
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _cursors(body: Mapping[str, Any]) -> dict[str, int]:
    """The request's cursor map (grid id -> server_seq), checked."""
    cursors = body.get("cursors", {})
    if not isinstance(cursors, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEQ
        for k, v in cursors.items()
    ):
        raise _bad(f"cursors must map grid ids to integers from 0 to {MAX_SEQ}")
    return cursors


def _schema_version(body: Mapping[str, Any]) -> int:
    v = body.get("schema_version")
    if isinstance(v, bool) or not isinstance(v, int) or v > MAX_SCHEMA_VERSION:
        raise _bad(f"schema_version must be an integer (at most {MAX_SCHEMA_VERSION})")
    if v < MIN_SCHEMA_VERSION:
        raise ApiError(426, "schema_unsupported", f"schema version {v} is too old; this server needs >= {MIN_SCHEMA_VERSION}")
    return v


H_ATTACHMENT_SIZE = "X-Fieldsync-Attachment-Size"
MAX_STATUS_HASHES = 100


def _check_hash(digest: str) -> None:
    if not is_content_hash(digest):
        raise _bad("an attachment is named by its SHA-256: 64 lower-case hex digits")


def _count(text: str, what: str) -> int:
    """A byte count or offset: decimal digits only (no sign, no spaces)."""
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise _bad(f"{what} must be a whole number of bytes")
    return int(text)


def _query(query: str, names: tuple[str, ...]) -> dict[str, str]:
    """The named parameters of a query string (each at most once; others are ignored)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in names:
            if name in out:
                raise _bad(f"{name} is given twice")
            out[name] = value
    return out


class District:
    """One district's server state over a :class:`~server_stub.db.Database`."""

    def __init__(self, db: Database | str, registry: Registry | None = None,
                 attachments: AttachmentStorage | str | os.PathLike[str] | None = None) -> None:
        self.db = connect(db) if isinstance(db, str) else db
        self.registry = registry if registry is not None else default_registry()
        # A node id per process: two server processes never issue the same stamp.
        self.clock = HybridClock(f"srv-{os.getpid()}-{os.urandom(3).hex()}")
        # Attachment bytes: a storage, a folder, or by default $FIELDSYNC_ATTACHMENTS /
        # <sqlite file>-attachments / ./attachments (created on first use).
        if isinstance(attachments, AttachmentStorage):
            self.attachments: AttachmentStorage = attachments
        else:
            self.attachments = DirectoryStorage(attachments if attachments is not None else default_folder(self.db))
        self._next_sweep = 0.0
        backfill_refs(self.db)

    # -- devices -------------------------------------------------------------
    def enroll(self, body: Mapping[str, Any], source: str) -> dict[str, Any]:
        code, key, node = body.get("code"), body.get("public_key"), body.get("node_id")
        name = body.get("device_name", "")
        if not isinstance(code, str) or not code or len(code) > 64:
            raise _bad("code must be the enrollment code text")
        if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
            raise _bad("node_id must be 1-40 letters, digits or -")
        if not isinstance(name, str) or "\x00" in name:
            raise _bad("device_name must be text (without NUL characters)")
        if not isinstance(key, str):
            raise _bad("public_key must be base64 text")
        version = _schema_version(body)
        device, grids = auth.enroll(self.db, code, key, node, name, version, source)
        return {"device_id": device.id, "worker_id": device.worker_id, "grids": grids,
                "schema_version": SCHEMA_VERSION, "server_time_ms": _now_ms()}

    def authenticate(self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]) -> Device:
        return auth.verify_request(self.db, method, path, query, body, headers)

    def _actor(self, tx: Tx, device: Device) -> Actor:
        return Actor(device.worker_id, "worker", frozenset(auth.scope_of(tx, device.worker_id)))

    # -- sync ----------------------------------------------------------------
    def push(self, device: Device, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a device's changes exactly once, in seq order; see docs/protocol.md."""
        _schema_version(body)
        raw = body.get("changes")
        if not isinstance(raw, list):
            raise _bad("changes must be a list")
        if len(raw) > MAX_PUSH_CHANGES:
            raise ApiError(413, "too_many_changes", f"at most {MAX_PUSH_CHANGES} changes per push")
        try:
            changes = [parse_change(c) for c in raw]
        except ProtocolError as exc:
            raise _bad(str(exc)) from None
        seqs = [c.seq for c in changes]
        if seqs and seqs[-1] > MAX_SEQ:
            raise _bad(f"seq must be at most {MAX_SEQ}")
        if any(b <= a for a, b in zip(seqs, seqs[1:])):
            raise _bad("changes must be in strictly increasing seq order")
        confirmed = body.get("confirmed_seq")
        if confirmed is not None and (isinstance(confirmed, bool) or not isinstance(confirmed, int)
                                      or not 0 <= confirmed <= MAX_SEQ):
            raise _bad(f"confirmed_seq must be an integer from 0 to {MAX_SEQ}")
        first = seqs[0] if seqs else None
        with self.db.transaction() as tx:
            row = tx.one(f"SELECT last_seq FROM devices WHERE id = ?{tx.for_update()}", (device.id,))
            assert row is not None
            last = int(row[0])
            if confirmed is not None:
                behind = pushlog.behind(tx, device.id, confirmed, [c for c in changes if c.seq <= last])
                if behind:
                    raise ApiError(409, "outbox_behind", f"this device's outbox is behind the server's: {behind}; "
                                   f"number the pending changes after seq {last} and push them again",
                                   last_seq=last)
                pushlog.confirm(tx, device.id, confirmed)
            if first is None:  # an empty push: no batch, so no rejections to repeat
                first = last + 1
            actor = self._actor(tx, device)
            counters = GridCounters(tx)
            if any(c.seq > last for c in changes):
                # Lock the grid counters before any record row, always in the same
                # order: otherwise two pushes (record X then grid g / grid g then
                # record X) deadlock on PostgreSQL and one of them fails with a 500.
                counters.lock(actor.grids or ())
                # Then every record row the push touches, with one SELECT ... FOR UPDATE in sorted order.
                counters.prefetch((c.collection, c.id) for c in changes if c.seq > last)
            old_last = last
            refused: list[Rejection] = []
            applied = 0
            for change in changes:
                if change.seq <= last:
                    continue  # already applied: a retry after a lost response
                try:
                    apply_writes(counters, self.registry, self.clock, actor, change.collection, change.id, change.fields)
                    applied += 1
                except Refused as exc:
                    tx.execute(
                        "INSERT INTO rejections (device_id, seq, collection, id, code, message, field, created_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (device.id, change.seq, change.collection, change.id, exc.code, exc.message, exc.field, _now_ms()),
                    )
                    refused.append(Rejection(change.seq, change.collection, change.id, exc.code, exc.message, exc.field))
                    if exc.code == "out_of_scope":
                        audit.append(tx, f"device:{device.id}", "authz.refused_write", f"{change.collection}:{change.id}",
                                     {"grid": change.grid})
                last = change.seq
            counters.flush()
            tx.execute("UPDATE devices SET last_seq = ? WHERE id = ?", (last, device.id))
            if confirmed is not None:
                pushlog.record(tx, device.id, [c for c in changes if c.seq > old_last])
            if first > old_last:
                # Nothing in this push was seen before: its rejections are exactly the ones just made.
                rejections = [r.to_wire() for r in refused]
            else:  # a retry: repeat the rejections stored for the changes it resends
                rejections = [
                    Rejection(int(r[0]), r[1], r[2], r[3], r[4], r[5]).to_wire()
                    for r in tx.all(
                        "SELECT seq, collection, id, code, message, field FROM rejections "
                        "WHERE device_id = ? AND seq >= ? AND seq <= ? ORDER BY seq",
                        (device.id, first, last),
                    )
                ]
        if device.revoked:
            with self.db.transaction() as tx:
                audit.append(tx, f"device:{device.id}", "device.final_push", f"device:{device.id}", {"applied": applied})
        answer = {"acked_seq": last, "rejections": rejections, "applied": applied,
                  "more_to_pull": applied > 0 and not device.revoked, "server_time_ms": _now_ms()}
        if device.revoked:
            answer["revoked"] = {"wipe": device.wipe}
        return answer

    def pull(self, device: Device, body: Mapping[str, Any]) -> bytes:
        """The next page of changes for the device's grids after its cursors."""
        device.refuse_if_revoked()
        _schema_version(body)
        cursors = _cursors(body)
        limit = body.get("limit", DEFAULT_PULL_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PULL_LIMIT:
            raise _bad(f"limit must be an integer from 1 to {MAX_PULL_LIMIT}")
        snapshots = body.get("snapshots", False)
        if not isinstance(snapshots, bool):
            raise _bad("snapshots must be true or false")
        # Record the acknowledged cursors (for compaction); a cursor below a compaction mark may restart at 0.
        cursors, snapshot = compaction.pull_cursors(self.db, device.id, device.worker_id, cursors, snapshots)
        # One snapshot for the counter and the rows (under READ COMMITTED a commit between the two
        # SELECTs would send a checksum the page does not match); a pull only reads, so on SQLite
        # it takes no write lock and never queues behind pushes (Database.read_transaction).
        with self.db.read_transaction() as tx:
            grids = auth.scope_of(tx, device.worker_id)
            rows, out_cursors, checksums, more = page(tx, grids, cursors, limit)
        head = json.dumps({"cursors": out_cursors, "checksums": checksums, "grids": grids, "more": more,
                           **({"snapshot": snapshot} if snapshot else {}),
                           "server_time_ms": _now_ms()}, ensure_ascii=False, separators=(",", ":"))
        return (head[:-1] + ',"changes":' + encode_rows(rows) + "}").encode("utf-8")

    def wait_request(self, device: Device, body: Mapping[str, Any]) -> tuple[list[str], dict[str, int], int]:
        """Check a long-poll request: (the device's grids, its cursors, the timeout in ms)."""
        from .watch import MAX_WAIT_MS

        device.refuse_if_revoked()
        _schema_version(body)
        cursors = _cursors(body)
        timeout = body.get("timeout_ms", 25_000)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= MAX_WAIT_MS:
            raise _bad(f"timeout_ms must be an integer from 0 to {MAX_WAIT_MS}")
        with self.db.transaction() as tx:
            grids = auth.scope_of(tx, device.worker_id)
        return grids, cursors, timeout

    def _scoped_grid(self, tx: Tx, device: Device, body: Mapping[str, Any]) -> str:
        grid = body.get("grid")
        if not isinstance(grid, str) or not _ID_RE.fullmatch(grid):
            raise _bad("grid must be a grid id (1-64 characters [A-Za-z0-9_.:-])")
        if grid not in auth.scope_of(tx, device.worker_id):
            audit.append(tx, f"device:{device.id}", "authz.refused_read", f"grid:{grid[:64]}", {})
            raise ApiError(403, "out_of_scope", "this grid is not assigned to you")
        return grid

    def buckets(self, device: Device, body: Mapping[str, Any]) -> dict[str, Any]:
        """Per-bucket digests of one grid, for finding where a device diverged."""
        device.refuse_if_revoked()
        refused: ApiError | None = None
        with self.db.transaction() as tx:
            try:
                grid = self._scoped_grid(tx, device, body)
            except ApiError as exc:
                refused = exc
            else:
                seq, digests = bucket_digests(tx, grid)
        if refused:
            raise refused
        return {"grid": grid, "seq": seq, "buckets": digests, "server_time_ms": _now_ms()}

    def repair(self, device: Device, body: Mapping[str, Any]) -> bytes:
        """Every record of the asked buckets of one grid (the server's version)."""
        device.refuse_if_revoked()
        wanted = body.get("buckets")
        if not isinstance(wanted, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < N_BUCKETS for b in wanted
        ):
            raise _bad(f"buckets must be a list of integers 0..{N_BUCKETS - 1}")
        refused: ApiError | None = None
        with self.db.transaction() as tx:
            try:
                grid = self._scoped_grid(tx, device, body)
            except ApiError as exc:
                refused = exc
            else:
                seq, records = bucket_records(tx, grid, set(wanted))
        if refused:
            raise refused
        head = json.dumps({"grid": grid, "seq": seq, "buckets": sorted(set(wanted)), "server_time_ms": _now_ms()},
                          ensure_ascii=False, separators=(",", ":"))
        return (head[:-1] + ',"records":' + encode_rows(records) + "}").encode("utf-8")

    # -- attachments (docs/protocol.md §16) ----------------------------------
    def _attachment_scope(self, device: Device, hashes: list[str], action: str) -> None:
        """Refuse (403, audited) unless a record of the device's grids refers to every hash.

        Checked before anything about the bytes is looked at, so the answer is
        the same whether or not the server holds the hash.
        """
        refused: ApiError | None = None
        with self.db.transaction() as tx:
            missing = sorted(set(hashes) - hashes_in_scope(tx, device.worker_id, hashes))
            if missing:
                audit.append(tx, f"device:{device.id}", action, f"attachment:{missing[0]}", {"refused": len(missing)})
                refused = ApiError(403, "out_of_scope", "no record of your grids refers to this attachment")
        if refused:
            raise refused

    def attachment_status(self, device: Device, body: Mapping[str, Any]) -> dict[str, Any]:
        """What the server holds of each asked hash: missing, partial or complete.

        A revoked device in its final-push grace may still ask and upload (``attachment_put``):
        the photos of the records it pushes last must reach the server before it erases itself.
        """
        _schema_version(body)
        hashes = body.get("hashes")
        if not isinstance(hashes, list) or not all(is_content_hash(h) for h in hashes):
            raise _bad("hashes must be a list of SHA-256 hashes (64 lower-case hex digits)")
        if len(hashes) > MAX_STATUS_HASHES:
            raise _bad(f"at most {MAX_STATUS_HASHES} hashes per request")
        self._attachment_scope(device, hashes, "authz.refused_read")
        out = []
        for h in hashes:
            state = self.attachments.state(h)
            out.append({"hash": h, "state": state.name, "received": state.received,
                        "size": state.size if state.received or state.complete else None})
        return {"attachments": out, "server_time_ms": _now_ms()}

    def attachment_put(self, device: Device, digest: str, query: str, size_header: str | None,
                       data: bytes) -> dict[str, Any]:
        """Take one chunk of an upload (raw bytes at ``offset``); complete it when the last byte arrives."""
        _check_hash(digest)
        params = _query(query, ("offset",))
        if "offset" not in params:
            raise _bad("the query must give offset=N")
        offset = _count(params["offset"], "offset")
        if size_header is None:
            raise _bad(f"the header {H_ATTACHMENT_SIZE} must give the attachment's size")
        size = _count(size_header, H_ATTACHMENT_SIZE)
        if size > MAX_ATTACHMENT_BYTES:
            raise ApiError(413, "attachment_too_large", f"attachments are limited to {MAX_ATTACHMENT_BYTES} bytes")
        if offset + len(data) > size:
            raise _bad(f"the chunk ends past the attachment's size ({size} bytes)")
        self._attachment_scope(device, [digest], "authz.refused_write")
        self._sweep_stale()
        try:
            state = self.attachments.append(digest, offset, data, size)
        except OffsetMismatch as exc:
            raise ApiError(409, "offset_mismatch", f"the upload continues at byte {exc.received}",
                           received=exc.received) from None
        except SizeMismatch as exc:
            raise ApiError(409, "size_mismatch", f"the upload in progress is of {exc.size} bytes",
                           size=exc.size, received=exc.received) from None
        except HashMismatch:
            with self.db.transaction() as tx:
                audit.append(tx, f"device:{device.id}", "attachment.hash_mismatch", f"attachment:{digest}",
                             {"size": size})
            raise ApiError(422, "hash_mismatch", "the bytes received do not have this SHA-256; "
                           "they were discarded, start again from 0") from None
        return {"state": state.name, "received": state.received, "size": state.size}

    def attachment_get(self, device: Device, digest: str, query: str) -> tuple[bytes, int]:
        """Up to 1 MiB of a complete attachment from ``offset``: (bytes, whole size)."""
        device.refuse_if_revoked()
        _check_hash(digest)
        params = _query(query, ("offset", "length"))
        offset = _count(params.get("offset", "0"), "offset")
        length = _count(params.get("length", str(MAX_CHUNK_BYTES)), "length")
        self._attachment_scope(device, [digest], "authz.refused_read")
        state = self.attachments.state(digest)
        if not state.complete:
            raise ApiError(404, "attachment_pending", "this attachment has not arrived on the server yet")
        if offset > state.received:
            raise _bad(f"offset is past the end of the attachment ({state.received} bytes)")
        return self.attachments.open_range(digest, offset, min(length, MAX_CHUNK_BYTES)), state.received

    def _sweep_stale(self) -> None:
        """Now and then (at most hourly per process), remove uploads nobody continued for 7 days."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 3600
        self.attachments.remove_stale(STALE_PARTIAL_MS)

    # -- administration ------------------------------------------------------
    def add_worker(self, worker_id: str, name: str, role: str = "worker", department: str | None = None) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO workers (id, name, role, department) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, "
                       "department = excluded.department", (worker_id, name, role, department))
            audit.append(tx, "admin", "worker.upsert", f"worker:{worker_id}", {"role": role})

    def assign(self, worker_id: str, grid_id: str, actor: str = "admin") -> None:
        """Put ``grid_id`` in the worker's scope (their devices get it on the next pull)."""
        with self.db.transaction() as tx:
            if tx.one("SELECT 1 FROM workers WHERE id = ?", (worker_id,)) is None:
                raise ApiError(404, "worker_unknown", f"no worker {worker_id!r}")
            tx.execute("INSERT INTO assignments (worker_id, grid_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       (worker_id, grid_id))
            audit.append(tx, actor, "assignment.add", f"worker:{worker_id}", {"grid": grid_id})

    def unassign(self, worker_id: str, grid_id: str, actor: str = "admin") -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM assignments WHERE worker_id = ? AND grid_id = ?", (worker_id, grid_id))
            audit.append(tx, actor, "assignment.remove", f"worker:{worker_id}", {"grid": grid_id})

    def issue_code(self, worker_id: str, ttl_s: int = auth.CODE_TTL_S) -> tuple[str, int]:
        return auth.issue_code(self.db, worker_id, ttl_s)

    def devices(self) -> list[dict[str, Any]]:
        with self.db.transaction() as tx:
            rows = tx.all("SELECT id, worker_id, name, enrolled_ms, last_seen_ms, revoked_ms, wipe, last_seq "
                          "FROM devices ORDER BY enrolled_ms")
        keys = ("id", "worker_id", "name", "enrolled_ms", "last_seen_ms", "revoked_ms", "wipe", "last_seq")
        return [dict(zip(keys, r)) for r in rows]

    def revoke(self, device_id: str, wipe: bool = False, actor: str = "admin") -> None:
        with self.db.transaction() as tx:
            tx.execute("UPDATE devices SET revoked_ms = ?, wipe = ? WHERE id = ? AND revoked_ms IS NULL",
                       (_now_ms(), 1 if wipe else 0, device_id))
            if tx.rowcount != 1:
                raise ApiError(404, "device_unknown", f"no active device {device_id!r}")
            audit.append(tx, actor, "device.revoke", f"device:{device_id}", {"wipe": wipe})

    def write(self, actor: Actor, collection: str, rid: str, values: Mapping[str, Any]) -> None:
        """A server-side write (command centre, department, job) with server stamps."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT body, grid FROM records WHERE collection = ? AND id = ?", (collection, rid))
            current = load_state(row[0]) if row else {}
            counters = GridCounters(tx)
            kind_grid = self.registry.get(collection).grid_field if collection in self.registry else "grid_id"
            # Grid counters before record rows, in sorted order, like every other writer.
            counters.lock({g for g in (row[1] if row else None, values.get(kind_grid)) if isinstance(g, str)})
            stamp = self.clock.now().encode()
            writes = {}
            for name, value in values.items():
                cur = current.get(name)
                writes[name] = [value, stamp, cur.stamp.encode() if cur else None]
            try:
                apply_writes(counters, self.registry, self.clock, actor, collection, rid, writes)
            except Refused as exc:
                raise ApiError(409 if exc.code == "transition_not_allowed" else 400, exc.code, exc.message) from None
            counters.flush()

    def write_many(self, actor: Actor, collection: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Bulk server-side creation (demo data, imports) in one transaction."""
        n = 0
        items = list(records)
        with self.db.transaction() as tx:
            counters = GridCounters(tx)
            kind = self.registry.get(collection)
            counters.lock({str(r.get("id" if kind.grid_field == "id" else kind.grid_field)) for r in items})
            for record in items:
                rid = str(record["id"])
                stamp = self.clock.now().encode()
                writes = {k: [v, stamp, None] for k, v in record.items() if k != "id" and v is not None}
                try:
                    apply_writes(counters, self.registry, self.clock, actor, collection, rid, writes)
                except Refused as exc:
                    raise ApiError(400, exc.code, f"{collection}/{rid}: {exc.message}") from None
                n += 1
            counters.flush()
        return n

    def get(self, collection: str, rid: str) -> dict[str, Any] | None:
        """The server's current values of one record (None if absent)."""
        with self.db.transaction() as tx:
            row = tx.one("SELECT body FROM records WHERE collection = ? AND id = ?", (collection, rid))
        if row is None:
            return None
        return {"id": rid, **values_of(load_state(row[0]))}

    def close(self) -> None:
        self.db.close()
