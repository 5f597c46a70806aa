"""Server-side report moves (dispatch, department progress, command decisions) as guarded writes.

The console and the jobs change reports through these functions, never by hand: each move is a
:func:`write_if` — it reads the report **under its locks** (the grid counter first, then the
record row, the order every writer uses), decides from what it found, and writes through
:func:`~server_stub.replica.apply_writes` with server stamps, so the workflow check by role
(``fieldsync/workflow.py``), the per-grid ``server_seq`` and the checksum are the same as for a
device's push, and the change syncs to the grid's devices.  A move that is no longer possible
(someone else moved the report first) is refused with ``409 transition_not_allowed``; a job
simply skips it, so running a job twice, or while devices sync, has the same result.

Each move appends one step to the report's ``timeline`` (``status``, ``by``, ``role``, ``at`` and
an optional ``note``) in the same write; a department's resolution note is also kept in the
report's ``resolution`` field.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from fieldsync.merge import DELETED, values_of
from fieldsync.workflow import transition_allowed

from .auth import ApiError
from .district import District
from .replica import Actor, GridCounters, Refused, apply_writes, load_state

__all__ = ["write_if", "step", "dispatch", "department_move", "command_move", "now_iso", "MAX_NOTE"]

MAX_NOTE = 1000
Decide = Callable[["dict[str, Any] | None"], "Mapping[str, Any] | None"]


def now_iso(now: datetime | None = None) -> str:
    """Server time as ISO 8601 with the local offset, seconds precision (how timelines record time)."""
    at = now or datetime.now(timezone.utc)
    return at.astimezone().isoformat(timespec="seconds")


def write_if(district: District, actor: Actor, collection: str, rid: str, decide: Decide,
             grid: str | None = None) -> dict[str, Any] | None:
    """Write what ``decide(current values or None)`` returns, atomically with the read; None: nothing written.

    ``grid`` names the grid of a record that may not exist yet (its counter is locked before the
    read, so two concurrent creators of the same id serialise and the second sees the first's
    record).  Values equal to the current ones are not rewritten.  Raises ApiError for a write
    the server refuses (``Refused`` codes; ``transition_not_allowed`` is a 409).
    """
    kind = district.registry.get(collection)
    for _ in range(3):
        with district.db.transaction() as tx:
            found = tx.one("SELECT grid FROM records WHERE collection = ? AND id = ?", (collection, rid))
            counters = GridCounters(tx)
            locked = {g for g in ((found[0] if found else None), grid) if g}
            counters.lock(locked)
            row = tx.one(f"SELECT body, grid FROM records WHERE collection = ? AND id = ?{tx.for_update()}",
                         (collection, rid))
            if (row is None) != (found is None) or (row is not None and row[1] not in locked):
                continue  # created or moved between the two reads: lock again, in order
            state = load_state(row[0]) if row else {}
            current = {"id": rid, **values_of(state)} if row else None
            if current is not None and DELETED in state and state[DELETED].value:
                current["_deleted"] = True  # decide() sees a tombstone as such
            wanted = decide(current)
            if not wanted:
                return None
            values = {k: v for k, v in wanted.items() if current is None or current.get(k) != v}
            if not values:
                return None
            target = values.get(kind.grid_field) if kind.grid_field != "id" else rid
            if target is not None and target not in locked:
                raise ValueError(f"{collection}/{rid}: a guarded write may not move a record to another grid")
            stamp = district.clock.now().encode()
            writes = {k: [v, stamp, state[k].stamp.encode() if k in state else None] for k, v in values.items()}
            try:
                apply_writes(counters, district.registry, district.clock, actor, collection, rid, writes)
            except Refused as exc:
                status = 409 if exc.code == "transition_not_allowed" else 400
                raise ApiError(status, exc.code, exc.message) from None
            counters.flush()
            return values
    raise ApiError(409, "busy", f"{collection}/{rid} kept changing; try again")


def step(status: str, actor: Actor, note: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """One timeline step, as the server records it."""
    out: dict[str, Any] = {"status": status, "by": actor.id, "role": actor.role, "at": now_iso(now)}
    if note:
        out["note"] = note
    return out


def _timeline(current: Mapping[str, Any], new_step: dict[str, Any]) -> list[Any]:
    steps = current.get("timeline")
    return [*(steps if isinstance(steps, list) else []), new_step]


def _clean_note(note: str | None) -> str | None:
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise ApiError(400, "note_too_long", f"a note is at most {MAX_NOTE} characters")
    return note or None


def _refuse(role: str, old: str | None, new: str) -> ApiError:
    return ApiError(409, "transition_not_allowed", f"a {role} may not move a report from {old or 'new'} to {new}")


def dispatch(district: District, actor: Actor, rid: str, department: str, due_at: str, note: str | None = None,
             only_from: tuple[str, ...] = ("submitted", "reopened", "dispatched"),
             now: datetime | None = None) -> dict[str, Any] | None:
    """Send report ``rid`` to ``department`` with a deadline; None when it is not in ``only_from`` any more.

    Raises ApiError 404 for an unknown report and 409 when the actor's role may not dispatch
    from the report's status.
    """
    note = _clean_note(note)
    if not department or len(department) > 50:
        raise ApiError(400, "bad_department", "department must be a name of 1-50 characters")
    try:
        datetime.fromisoformat(due_at)
    except ValueError:
        raise ApiError(400, "bad_due_at", "due_at must be a date and time") from None

    def decide(current: dict[str, Any] | None) -> Mapping[str, Any] | None:
        if current is None or current.get("_deleted"):
            raise ApiError(404, "report_unknown", f"no report {rid!r}")
        old = current.get("status")
        if old not in only_from:
            return None
        if not transition_allowed(actor.role, old, "dispatched"):
            raise _refuse(actor.role, old, "dispatched")
        if old == "dispatched" and current.get("department") == department and current.get("due_at") == due_at:
            return None
        values: dict[str, Any] = {"status": "dispatched", "department": department, "due_at": due_at,
                                  "timeline": _timeline(current, {**step("dispatched", actor, note, now),
                                                                  "department": department})}
        if current.get("escalated"):
            values["escalated"] = False  # a new deadline: not overdue any more
        return values

    return write_if(district, actor, "reports", rid, decide)


def department_move(district: District, actor: Actor, department: str, rid: str, status: str,
                    note: str | None = None, now: datetime | None = None) -> dict[str, Any] | None:
    """A department moves a report dispatched to it (``in_progress`` or ``resolved``, with a note).

    A report of another department is ``404 report_unknown``, exactly as if it did not exist.
    """
    note = _clean_note(note)
    if status == "resolved" and not note:
        raise ApiError(400, "note_required", "say how the problem was resolved")

    def decide(current: dict[str, Any] | None) -> Mapping[str, Any] | None:
        if current is None or current.get("_deleted") or current.get("department") != department:
            raise ApiError(404, "report_unknown", f"no report {rid!r} for {department}")
        old = current.get("status")
        if old == status:
            return None
        if not transition_allowed("department", old, status):
            raise _refuse("department", old, status)
        values: dict[str, Any] = {"status": status, "timeline": _timeline(current, step(status, actor, note, now))}
        if status == "resolved":
            values["resolution"] = note
            values["resolved_at"] = now_iso(now)
        return values

    return write_if(district, actor, "reports", rid, decide)


def command_move(district: District, actor: Actor, rid: str, status: str, note: str | None = None,
                 now: datetime | None = None) -> dict[str, Any] | None:
    """The command centre rejects a report or confirms a resolved one (per the workflow table)."""
    note = _clean_note(note)

    def decide(current: dict[str, Any] | None) -> Mapping[str, Any] | None:
        if current is None or current.get("_deleted"):
            raise ApiError(404, "report_unknown", f"no report {rid!r}")
        old = current.get("status")
        if old == status:
            return None
        if not transition_allowed(actor.role, old, status):
            raise _refuse(actor.role, old, status)
        return {"status": status, "timeline": _timeline(current, step(status, actor, note, now))}

    return write_if(district, actor, "reports", rid, decide)
