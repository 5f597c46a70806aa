"""Which changes a device has pushed: telling a change sent again from a new change with an old seq.

The server applies a device's changes exactly once by ``seq``: a change at or below the device's
``last_seq`` is taken as one sent again after a lost answer and skipped.  That is only right while
the device numbers its changes like the server remembers.  A store restored from an older copy
numbers new changes from where the copy stopped, so they would be skipped as old ones and lost.

So a device sends ``confirmed_seq`` with each push: the highest seq whose answer it has recorded.
On a real device it never goes down.  The server keeps the highest one it has seen
(``push_marks``) and a digest of each change above it (``push_log``).  A push is from an outbox
that is behind the server's when it confirms less than the device confirmed before, or when a
change it sends again is not the change the server applied under that seq.  The device then
numbers its pending changes after the server's ``last_seq`` and pushes them again
(docs/protocol.md §6.4).
"""

from __future__ import annotations

from typing import Sequence

from fieldsync.protocol import Change, record_digest

from .db import Tx

__all__ = ["behind", "change_digest", "confirm", "record"]


def change_digest(change: Change) -> int:
    """Which write a change is: its record and its fields' stamps (a stamp names one write of one node)."""
    return record_digest(change.collection, change.id, {k: w[1] for k, w in change.fields.items()})


def behind(tx: Tx, device_id: str, confirmed: int, resent: Sequence[Change]) -> str:
    """Why a push comes from an outbox behind the server's record of the device, or ``""``.

    ``resent`` are the push's changes at or below the device's ``last_seq``, in seq order.
    """
    row = tx.one("SELECT confirmed FROM push_marks WHERE device_id = ?", (device_id,))
    mark = int(row[0]) if row is not None else 0
    if confirmed < mark:
        return f"it confirms answers up to seq {confirmed}, but it confirmed seq {mark} before"
    if resent:
        stored = {int(seq): int(digest) for seq, digest in tx.all(
            "SELECT seq, digest FROM push_log WHERE device_id = ? AND seq >= ? AND seq <= ?",
            (device_id, resent[0].seq, resent[-1].seq))}
        for change in resent:
            digest = stored.get(change.seq)
            if digest is not None and digest != change_digest(change):
                return f"seq {change.seq} is not the change this device pushed under that seq"
    return ""


def confirm(tx: Tx, device_id: str, confirmed: int) -> None:
    """Record that the device holds the answers up to ``confirmed``; forget the digests up to it."""
    tx.execute("INSERT INTO push_marks (device_id, confirmed) VALUES (?, ?) ON CONFLICT (device_id) "
               "DO UPDATE SET confirmed = excluded.confirmed WHERE push_marks.confirmed < excluded.confirmed",
               (device_id, confirmed))
    tx.execute("DELETE FROM push_log WHERE device_id = ? AND seq <= ?", (device_id, confirmed))


def record(tx: Tx, device_id: str, changes: Sequence[Change]) -> None:
    """Keep the digest of each change just applied or refused."""
    tx.executemany("INSERT INTO push_log (device_id, seq, digest) VALUES (?, ?, ?)",
                   [(device_id, c.seq, change_digest(c)) for c in changes])
