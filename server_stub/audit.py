"""The server's append-only audit log: who did what to which object, never personal data.

Each entry's ``hash`` covers its content and the previous entry's hash, so
editing, deleting or reordering entries breaks the chain from that point; the
chain head (last number and hash) is also kept in ``server_meta``, so removing
the newest entries is seen too (:func:`verify`, ``fieldsync-server audit verify``).

What is written: an actor (``device:<id>``, ``worker:<id>``, ``console:<staff id>``,
``source:<address>``, ``admin``, ``job:<name>``), an action (``device.enroll``,
``authz.refused_read``, ...), an object id (``device:<id>``, ``grid:<id>``,
``households:<id>``, ``attachment:<hash>``) and a small JSON detail of codes and
counts.  Names, phone numbers, ID numbers, addresses and free text never go in.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Iterator

from .db import Database, Tx

__all__ = ["Entry", "Verdict", "append", "verify", "recent", "entries", "check_recorded_head"]

_GENESIS = "0" * 64
_HEAD_KEY = "audit_head"
_BATCH = 5000


@dataclass(frozen=True)
class Entry:
    n: int
    at_ms: int
    actor: str
    action: str
    object: str
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify`: ``broken_at`` is the first bad entry number (None when intact)."""

    ok: bool
    checked: int
    broken_at: int | None
    message: str


def _entry_hash(n: int, at_ms: int, actor: str, action: str, obj: str, detail: str, prev: str) -> str:
    text = "\x1f".join([str(n), str(at_ms), actor, action, obj, detail, prev])
    return hashlib.sha256(text.encode()).hexdigest()


def append(tx: Tx, actor: str, action: str, obj: str, detail: dict[str, Any]) -> None:
    """Add an entry inside the caller's transaction (ids and codes only, no personal data)."""
    # The chain head is one row, locked for the transaction: concurrent
    # appenders (several server processes) queue on it instead of forking.
    tx.execute("INSERT INTO server_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
               (_HEAD_KEY, f"0:{_GENESIS}"))
    head = tx.one(f"SELECT value FROM server_meta WHERE key = ?{tx.for_update()}", (_HEAD_KEY,))
    assert head is not None
    last_n, prev = str(head[0]).split(":")
    n = int(last_n) + 1
    at_ms = time.time_ns() // 1_000_000
    text = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    tx.execute(
        "INSERT INTO audit_log (n, at_ms, actor, action, object, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (n, at_ms, actor, action, obj, text, prev, digest := _entry_hash(n, at_ms, actor, action, obj, text, prev)),
    )
    tx.execute("UPDATE server_meta SET value = ? WHERE key = ?", (f"{n}:{digest}", _HEAD_KEY))


def entries(db: Database, after: int = 0) -> Iterator[Entry]:
    """Every entry numbered above ``after``, in order, read in batches (memory stays flat)."""
    while True:
        with db.transaction() as tx:
            batch = tx.all("SELECT n, at_ms, actor, action, object, detail, prev_hash, hash FROM audit_log "
                           f"WHERE n > ? ORDER BY n LIMIT {_BATCH}", (after,))
        for row in batch:
            yield Entry(int(row[0]), int(row[1]), *(str(v) for v in row[2:]))
        if len(batch) < _BATCH:
            return
        after = int(batch[-1][0])


def verify(db: Database) -> Verdict:
    """Check the whole chain and its head: the first altered, missing or reordered entry, if any."""
    with db.transaction() as tx:
        head_row = tx.one("SELECT value FROM server_meta WHERE key = ?", (_HEAD_KEY,))
    prev = _GENESIS
    count = 0
    for e in entries(db):
        count += 1
        if e.n != count:
            return Verdict(False, count - 1, count, f"entry {count} is missing (the next entry is {e.n})")
        if e.prev_hash != prev or _entry_hash(e.n, e.at_ms, e.actor, e.action, e.object, e.detail, e.prev_hash) != e.hash:
            return Verdict(False, count - 1, count, f"entry {count} was altered or moved")
        prev = e.hash
    head = str(head_row[0]) if head_row else f"0:{_GENESIS}"
    head_n, _, head_hash = head.partition(":")
    if not head_n.isdigit():
        return Verdict(False, count, count, "the chain head was altered")
    if int(head_n) < count:
        return Verdict(False, int(head_n), int(head_n) + 1, f"entries {int(head_n) + 1} to {count} were added "
                       "outside the server (the chain head ends before them)")
    if int(head_n) > count:
        return Verdict(False, count, count + 1, f"entries {count + 1} to {head_n} are missing (deleted at the end)")
    if head_hash != prev:
        return Verdict(False, count, count, f"entry {count} does not match the chain head (altered)")
    return Verdict(True, count, None, f"{count} entries checked, OK (head {count}:{prev[:16]})")


def recent(db: Database, limit: int = 50) -> list[Entry]:
    """The newest ``limit`` entries, oldest first."""
    with db.transaction() as tx:
        rows = tx.all("SELECT n, at_ms, actor, action, object, detail, prev_hash, hash FROM audit_log "
                      "ORDER BY n DESC LIMIT ?", (max(0, int(limit)),))
    return [Entry(int(r[0]), int(r[1]), *(str(v) for v in r[2:])) for r in reversed(rows)]


def check_recorded_head(db: Database, recorded: str) -> Verdict | None:
    """Compare with a head written down earlier (``N:HASH`` as ``verify`` prints it); None if it matches.

    A chain that verifies but no longer passes through a recorded head was rewritten as a whole.
    """
    n_text, _, prefix = recorded.partition(":")
    if not n_text.isdigit() or len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError("a recorded head is N:HASH as 'audit verify' prints it, e.g. 2216:9f2c4be01d7a3e55")
    n = int(n_text)
    with db.transaction() as tx:
        row = tx.one("SELECT hash FROM audit_log WHERE n = ?", (n,))
    if row is None:
        return Verdict(False, 0, n, f"entry {n} of the recorded head is gone (the log was cut back)")
    if not str(row[0]).startswith(prefix):
        return Verdict(False, 0, n, f"entry {n} is not the one recorded earlier (the chain was rewritten)")
    return None
