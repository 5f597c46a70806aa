"""Who may move a report from one status to another.  Pure, shared by device and server.

The command centre dispatches, departments act, the grid worker who reported
confirms or reopens.  A worker's device can only make worker transitions;
the server refuses the rest as rejections (they never apply).
"""

from __future__ import annotations

__all__ = ["ROLES", "REPORT_TRANSITIONS", "WORKER_PROTECTED_FIELDS", "transition_allowed", "allowed_next"]

ROLES = ("worker", "command", "department", "job")  # plus "admin" on the server: imports, no checks

# (from, to) pairs per role; None is "the report does not exist yet".
REPORT_TRANSITIONS: dict[str, frozenset[tuple[str | None, str]]] = {
    "worker": frozenset({
        (None, "submitted"),
        ("resolved", "confirmed"),
        ("resolved", "reopened"),
    }),
    "command": frozenset({
        (None, "submitted"),
        ("submitted", "dispatched"),
        ("reopened", "dispatched"),
        ("dispatched", "dispatched"),  # re-route to another department
        ("submitted", "rejected"),
        ("reopened", "rejected"),
        ("resolved", "confirmed"),
    }),
    "department": frozenset({
        ("dispatched", "in_progress"),
        ("dispatched", "resolved"),
        ("in_progress", "resolved"),
    }),
    "job": frozenset({
        ("submitted", "dispatched"),
        ("reopened", "dispatched"),
    }),
}

# Report fields only the command centre, departments and jobs write.
WORKER_PROTECTED_FIELDS = frozenset({"department", "due_at", "timeline", "escalated", "escalated_at",
                                     "resolution", "resolved_at"})


def transition_allowed(role: str, old: str | None, new: str) -> bool:
    """True when ``role`` may move a report from ``old`` to ``new`` (same status is no move)."""
    if old == new:
        return True
    return (old, new) in REPORT_TRANSITIONS.get(role, frozenset())


def allowed_next(role: str, old: str | None) -> list[str]:
    """The statuses ``role`` may move a report to from ``old`` (for buttons in a UI)."""
    return sorted(new for (frm, new) in REPORT_TRANSITIONS.get(role, frozenset()) if frm == old and new != old)
