"""Per-field last-writer-wins merge: pure functions, no I/O.

A record's replicated state is a mapping ``field -> FieldWrite``.  Each write
carries the HLC stamp that made it and ``base``: the stamp of the value it
overwrote, as the writer saw it.  Merging keeps, per field, the write with the
greater stamp (the stamp's node id breaks ties).  Deletion is the reserved
field ``_deleted`` (a tombstone with its own clock), merged like any other.

When the losing write was not the one the winner overwrote (``winner.base !=
loser.stamp``) and the values differ, the writers did not see each other: a
concurrent overwrite.  The merge reports it as a :class:`Conflict` holding
both values so a person can review it; it never silently picks without trace.

Device and server call the same functions, so they cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .clock import Stamp

__all__ = [
    "DELETED",
    "FieldWrite",
    "Conflict",
    "MergeResult",
    "merge_field",
    "merge_states",
    "merge_all",
    "is_deleted",
    "values_of",
]

DELETED = "_deleted"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class FieldWrite:
    """One write of one field: its value, its stamp and the stamp it overwrote."""

    value: Any
    stamp: Stamp
    base: Stamp | None = None

    def to_wire(self) -> list[Any]:
        return [self.value, self.stamp.encode(), self.base.encode() if self.base else None]

    @classmethod
    def from_wire(cls, data: Any) -> "FieldWrite":
        """Parse ``[value, stamp, base]``; raises ``ValueError`` if malformed."""
        if not isinstance(data, list) or len(data) != 3:
            raise ValueError("a field write is [value, stamp, base]")
        value, stamp, base = data
        return cls(value, Stamp.decode(stamp), Stamp.decode(base) if base is not None else None)

    def _order_key(self) -> tuple[Stamp, str]:
        # The stamp decides; the canonical value only orders two writes that
        # claim the same stamp (which a correct node never issues).
        return (self.stamp, _canonical(self.value))


@dataclass(frozen=True)
class Conflict:
    """A concurrent overwrite of ``field``: ``winner`` is kept, ``loser`` recorded."""

    field: str
    winner: FieldWrite
    loser: FieldWrite

    def key(self) -> tuple[str, str, str]:
        return (self.field, self.winner.stamp.encode(), self.loser.stamp.encode())


@dataclass(frozen=True)
class MergeResult:
    state: dict[str, FieldWrite]
    conflicts: list[Conflict]
    changed: set[str]  # fields of the first state whose write was replaced


def merge_field(name: str, a: FieldWrite, b: FieldWrite) -> tuple[FieldWrite, Conflict | None]:
    """The surviving write of two writes of one field, and the conflict if any."""
    if a == b:
        return a, None
    winner, loser = (a, b) if a._order_key() >= b._order_key() else (b, a)
    if winner.base != loser.stamp and _canonical(winner.value) != _canonical(loser.value):
        return winner, Conflict(name, winner, loser)
    return winner, None


def merge_states(
    a: Mapping[str, FieldWrite], b: Mapping[str, FieldWrite]
) -> MergeResult:
    """Merge two replicas of one record.  Commutative, associative, idempotent."""
    state = dict(a)
    conflicts: list[Conflict] = []
    changed: set[str] = set()
    for name, incoming in b.items():
        current = state.get(name)
        if current is None:
            state[name] = incoming
            changed.add(name)
            continue
        winner, conflict = merge_field(name, current, incoming)
        if winner is not current:
            state[name] = winner
            changed.add(name)
        if conflict is not None:
            conflicts.append(conflict)
    return MergeResult(state, conflicts, changed)


def merge_all(states: Iterable[Mapping[str, FieldWrite]]) -> MergeResult:
    """Fold :func:`merge_states` over many replicas; conflicts are de-duplicated."""
    state: dict[str, FieldWrite] = {}
    seen: dict[tuple[str, str, str], Conflict] = {}
    changed: set[str] = set()
    for s in states:
        result = merge_states(state, s)
        state = result.state
        changed |= result.changed
        for c in result.conflicts:
            seen.setdefault(c.key(), c)
    return MergeResult(state, list(seen.values()), changed)


def is_deleted(state: Mapping[str, FieldWrite]) -> bool:
    """True when the record's tombstone is set."""
    tomb = state.get(DELETED)
    return bool(tomb and tomb.value)


def values_of(state: Mapping[str, FieldWrite]) -> dict[str, Any]:
    """The plain field values of a state, without the tombstone."""
    return {k: w.value for k, w in state.items() if k != DELETED}
