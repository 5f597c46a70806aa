"""The server's append-only audit log: who did what to which object, never personal data.

Each entry's ``hash`` covers its content and the previous entry's hash, so
editing or deleting an entry breaks the chain from that point (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from .db import Database, Tx

__all__ = ["append", "verify"]

_GENESIS = "0" * 64


def _entry_hash(n: int, at_ms: int, actor: str, action: str, obj: str, detail: str, prev: str) -> str:
    text = "\x1f".join([str(n), str(at_ms), actor, action, obj, detail, prev])
    return hashlib.sha256(text.encode()).hexdigest()


def append(tx: Tx, actor: str, action: str, obj: str, detail: dict[str, Any]) -> None:
    """Add an entry inside the caller's transaction (ids and codes only, no personal data)."""
    # The chain head is one row, locked for the transaction: concurrent
    # appenders (several server processes) queue on it instead of forking.
    tx.execute("INSERT INTO server_meta (key, value) VALUES ('audit_head', ?) ON CONFLICT (key) DO NOTHING",
               (f"0:{_GENESIS}",))
    head = tx.one(f"SELECT value FROM server_meta WHERE key = 'audit_head'{tx.for_update()}")
    assert head is not None
    last_n, prev = str(head[0]).split(":")
    n = int(last_n) + 1
    at_ms = time.time_ns() // 1_000_000
    text = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    tx.execute(
        "INSERT INTO audit_log (n, at_ms, actor, action, object, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (n, at_ms, actor, action, obj, text, prev, digest := _entry_hash(n, at_ms, actor, action, obj, text, prev)),
    )
    tx.execute("UPDATE server_meta SET value = ? WHERE key = 'audit_head'", (f"{n}:{digest}",))


def verify(db: Database) -> tuple[bool, int, str]:
    """Check the whole chain: (ok, entries checked, message)."""
    prev = _GENESIS
    count = 0
    with db.transaction() as tx:
        rows = tx.all("SELECT n, at_ms, actor, action, object, detail, prev_hash, hash FROM audit_log ORDER BY n")
    for n, at_ms, actor, action, obj, detail, prev_hash, h in rows:
        count += 1
        if int(n) != count:
            return False, count, f"entry {count} is missing (found {n})"
        if prev_hash != prev or _entry_hash(int(n), int(at_ms), actor, action, obj, detail, prev_hash) != h:
            return False, count, f"entry {n} was altered"
        prev = h
    return True, count, f"audit log intact: {count} entries"
