"""Compaction of tombstones and departures, and the cursors devices acknowledge on pull.

Every pull records the cursors the device sent (``device_cursors``): a device sends the cursor
it has stored, i.e. everything up to it is applied on the device.  :func:`compact` removes, per
grid, the tombstoned records and departures at or below the lowest cursor acknowledged by the
**active** devices holding that grid (not revoked, seen in the last ``active_days``), XORs the
removed tombstones out of the grid checksum (so a device that still holds them finds a checksum
mismatch and drops them through bucket repair, §11.3), and raises the grid's compaction mark to
the highest ``server_seq`` it removed.

A device whose cursor for a grid is below that mark may have missed a removed delete or
departure.  If the device says it understands snapshots (``"snapshots": true`` in the pull
body), the server answers that grid from 0 — a snapshot of every live record — and names the
grid in the page's ``snapshot`` list; the server remembers that the snapshot was served, so the
device's following pages continue from its new cursor instead of starting over.  A device that
does not say so is paged from its cursor as usual; the grid checksum then shows the missed
removals and bucket repair fixes them.  Either way the device keeps its outbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

from . import audit
from .auth import scope_of
from .db import Database

__all__ = ["pull_cursors", "compact", "CompactionResult", "ACTIVE_DAYS"]

ACTIVE_DAYS = 30
DAY_MS = 24 * 3600 * 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def pull_cursors(db: Database, device_id: str, worker_id: str, cursors: Mapping[str, int],
                 snapshots: bool) -> tuple[dict[str, int], list[str]]:
    """Record the cursors a device sent; return (the cursors to page from, grids answered as snapshots).

    Only grids in the worker's scope are recorded (a device cannot fill the table with made-up grids).
    """
    now = _now_ms()
    effective = dict(cursors)
    snapshot_grids: list[str] = []
    with db.transaction() as tx:
        scope = set(scope_of(tx, worker_id))
        marks = {g: int(b) for g, b in tx.all("SELECT grid, below FROM compaction_marks")} if scope else {}
        known = {g: (int(s), int(m)) for g, s, m in
                 tx.all("SELECT grid, seq, snapshot_mark FROM device_cursors WHERE device_id = ?", (device_id,))}
        for grid in sorted(scope):
            cursor = int(cursors.get(grid, 0))
            mark = marks.get(grid, 0)
            served = known.get(grid, (0, 0))[1]
            if snapshots and 0 < cursor < mark and served != mark:
                effective[grid] = 0
                snapshot_grids.append(grid)
                served = mark
            elif cursor >= mark:
                served = 0
            if known.get(grid) != (cursor, served):
                tx.execute("INSERT INTO device_cursors (device_id, grid, seq, snapshot_mark, updated_ms) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, grid) DO UPDATE SET seq = excluded.seq, "
                           "snapshot_mark = excluded.snapshot_mark, updated_ms = excluded.updated_ms",
                           (device_id, grid, cursor, served, now))
        gone = [g for g in known if g not in scope]
        if gone:
            tx.executemany("DELETE FROM device_cursors WHERE device_id = ? AND grid = ?", [(device_id, g) for g in gone])
    return effective, snapshot_grids


@dataclass(frozen=True)
class CompactionResult:
    grid: str
    acknowledged: int  # the lowest cursor of the grid's active devices (the grid's top if none)
    tombstones: int
    departures: int
    mark: int

    def to_json(self) -> dict[str, int | str]:
        return {"grid": self.grid, "acknowledged": self.acknowledged, "tombstones": self.tombstones,
                "departures": self.departures, "mark": self.mark}


def _lowest_acknowledged(db: Database, grid: str, top: int, since_ms: int) -> int:
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT d.id, c.seq FROM devices d JOIN assignments a ON a.worker_id = d.worker_id AND a.grid_id = ? "
            "LEFT JOIN device_cursors c ON c.device_id = d.id AND c.grid = ? "
            "WHERE d.revoked_ms IS NULL AND COALESCE(d.last_seen_ms, d.enrolled_ms) >= ?",
            (grid, grid, since_ms))
    if not rows:
        return top
    return min(int(seq) if seq is not None else 0 for _, seq in rows)


def compact(db: Database, active_days: int = ACTIVE_DAYS, actor: str = "job:compact",
            now_ms: int | None = None) -> list[CompactionResult]:
    """Remove tombstones and departures every active device has acknowledged, grid by grid.

    Each grid is one transaction that holds the grid's counter row (the lock every writer takes
    first), so it is safe while devices push and pull.  Running it again removes nothing more
    until devices acknowledge more.
    """
    since = (now_ms if now_ms is not None else _now_ms()) - active_days * DAY_MS
    with db.transaction() as tx:
        grids = [(g, int(s)) for g, s in tx.all("SELECT grid, seq FROM grid_state ORDER BY grid")]
    out = []
    for grid, top in grids:
        acked = _lowest_acknowledged(db, grid, top, since)
        if acked <= 0:
            continue
        with db.transaction() as tx:
            state = tx.one(f"SELECT checksum FROM grid_state WHERE grid = ?{tx.for_update()}", (grid,))
            assert state is not None
            checksum = int(state[0])
            tombs = tx.all("SELECT collection, id, server_seq, digest FROM records "
                           "WHERE grid = ? AND deleted = 1 AND server_seq <= ?", (grid, acked))
            deps = tx.all("SELECT server_seq FROM departures WHERE grid = ? AND server_seq <= ?", (grid, acked))
            if not tombs and not deps:
                continue
            for *_, digest in tombs:
                checksum ^= int(digest)
            tx.executemany("DELETE FROM records WHERE collection = ? AND id = ? AND deleted = 1",
                           [(c, r) for c, r, _, _ in tombs])
            tx.execute("DELETE FROM departures WHERE grid = ? AND server_seq <= ?", (grid, acked))
            tx.execute("UPDATE grid_state SET checksum = ? WHERE grid = ?", (checksum, grid))
            highest = max([int(s) for _, _, s, _ in tombs] + [int(s) for (s,) in deps])
            old = tx.one("SELECT below FROM compaction_marks WHERE grid = ?", (grid,))
            mark = max(highest, int(old[0]) if old else 0)
            tx.execute("INSERT INTO compaction_marks (grid, below) VALUES (?, ?) ON CONFLICT (grid) "
                       "DO UPDATE SET below = excluded.below", (grid, mark))
            audit.append(tx, actor, "job.compact", f"grid:{grid}",
                         {"tombstones": len(tombs), "departures": len(deps), "mark": mark})
        out.append(CompactionResult(grid, acked, len(tombs), len(deps), mark))
    return out
