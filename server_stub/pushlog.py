"""Which changes a device has pushed: telling a change sent again from a new change with an old seq.

The server applies a device's changes exactly once by ``seq``: a change at or below the device's
``last_seq`` is taken as one sent again after a lost answer and skipped.  That is only right while
the device numbers its changes like the server remembers.  A store restored from an older copy
numbers new changes from where the copy stopped, so they would be skipped as old ones and lost.

So a device sends ``confirmed_seq`` with each push: the highest seq whose answer it has recorded.
On a real device it never goes down.  The server keeps the highest one it has seen
(``push_marks``) and which write each change above it was (``push_log``, one row per push).  A
push is from an outbox that is behind the server's when it confirms less than the device
confirmed before, or when a change it sends again is not the write the server applied under that
seq.  The device then numbers its pending changes after the server's ``last_seq`` and pushes them
again (docs/protocol.md §6.4).
"""

from __future__ import annotations

import json
from typing import Sequence

from fieldsync.protocol import Change

from .db import Tx

__all__ = ["behind", "confirm", "record", "write_of"]


def write_of(change: Change) -> str:
    """Which write a change is: its record and its newest stamp (a stamp names one write of one node)."""
    return f"{change.collection}/{change.id}@{max(w[1] for w in change.fields.values())}"


def behind(tx: Tx, device_id: str, confirmed: int, resent: Sequence[Change]) -> str:
    """Why a push comes from an outbox behind the server's record of the device, or ``""``.

    ``resent`` are the push's changes at or below the device's ``last_seq``, in seq order.
    """
    row = tx.one("SELECT confirmed FROM push_marks WHERE device_id = ?", (device_id,))
    mark = int(row[0]) if row is not None else 0
    if confirmed < mark:
        return f"it confirms answers up to seq {confirmed}, but it confirmed seq {mark} before"
    if resent:
        applied: dict[int, str] = {}
        for (writes,) in tx.all("SELECT writes FROM push_log WHERE device_id = ? AND last_seq >= ? AND first_seq <= ?",
                                (device_id, resent[0].seq, resent[-1].seq)):
            applied.update((int(seq), str(write)) for seq, write in json.loads(writes))
        for change in resent:
            write = applied.get(change.seq)
            if write is not None and write != write_of(change):
                return f"seq {change.seq} is not the change this device pushed under that seq"
    return ""


def confirm(tx: Tx, device_id: str, confirmed: int) -> None:
    """Record that the device holds the answers up to ``confirmed``; forget the pushes it covers."""
    tx.execute("INSERT INTO push_marks (device_id, confirmed) VALUES (?, ?) ON CONFLICT (device_id) "
               "DO UPDATE SET confirmed = excluded.confirmed WHERE push_marks.confirmed < excluded.confirmed",
               (device_id, confirmed))
    tx.execute("DELETE FROM push_log WHERE device_id = ? AND last_seq <= ?", (device_id, confirmed))


def record(tx: Tx, device_id: str, changes: Sequence[Change]) -> None:
    """Keep which write each change just applied or refused was (one row for the push)."""
    if changes:
        tx.execute("INSERT INTO push_log (device_id, first_seq, last_seq, writes) VALUES (?, ?, ?, ?)",
                   (device_id, changes[0].seq, changes[-1].seq,
                    json.dumps([[c.seq, write_of(c)] for c in changes], separators=(",", ":"))))
