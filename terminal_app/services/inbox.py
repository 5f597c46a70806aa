"""The worker's inbox: tasks assigned to them and the reports they made, with status and timeline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any, Iterable

import fieldsync
from fieldsync import Store
from fieldsync.workflow import allowed_next, transition_allowed

__all__ = ["InboxItem", "inbox", "timeline", "report_steps", "actor_of", "short_time", "worker_actions",
           "set_report_status", "my_move", "describe_location", "task_household"]


@dataclass(frozen=True)
class InboxItem:
    kind: str  # "task" | "report"
    id: str
    title: str
    status: str
    when: str
    department: str | None = None


def inbox(store: Store, worker_id: str) -> list[InboxItem]:
    """Open tasks for ``worker_id`` first (by due date), then their reports (newest first)."""
    tasks = [t for t in store.list("tasks") if t.get("assignee") == worker_id and t.get("status", "open") == "open"]
    tasks.sort(key=lambda t: t.get("due") or "9999")
    reports = [r for r in store.list("reports") if r.get("reporter_id") == worker_id]
    reports.sort(key=lambda r: r.get("reported_at") or "", reverse=True)
    items = [InboxItem("task", t["id"], t.get("title") or t.get("kind", ""), t.get("status", "open"),
                       t.get("due") or "") for t in tasks]
    items += [InboxItem("report", r["id"], f"{r.get('category', '')}: {r.get('description', '')}",
                        r.get("status", "submitted"), r.get("reported_at") or "", r.get("department"))
              for r in reports]
    return items


def timeline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's status steps, oldest first (the command centre writes them)."""
    steps = [s for s in report.get("timeline") or [] if isinstance(s, dict)]
    steps.sort(key=lambda s: str(s.get("at", "")))
    if not steps:
        steps = [{"status": report.get("status", "submitted"), "at": report.get("reported_at", ""),
                  "by": report.get("reporter_id", "")}]
    return steps


# -- the report detail: steps, who, when, what the worker may do ------------------
WORKER = "worker"
_COMMAND_IDS = ("command-centre", "command")


def report_steps(report: dict[str, Any], my_move: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """:func:`timeline`, plus the current status as a last step when the timeline does not show it yet.

    The command centre writes the timeline; a worker's own move (confirmed,
    reopened) shows here at once, with the time from ``my_move`` (what
    :func:`my_move` returns) when it was made on this tablet, else no time.
    """
    steps = timeline(report)
    status = report.get("status") or "submitted"
    if steps and steps[-1].get("status") != status:
        if my_move and my_move.get("status") == status:
            steps.append({"status": status, "at": str(my_move.get("at") or ""), "by": report.get("reporter_id", "")})
        else:
            steps.append({"status": status, "at": "", "by": ""})
    return steps


def actor_of(by: str, worker_id: str, departments: Iterable[str] = (), role: str | None = None,
             department: str | None = None) -> tuple[str, str]:
    """Who wrote a step, as ``(kind, name)``: kind is ``me``, ``command``, ``department`` or ``other``.

    Steps the server writes carry the actor's ``role``; ``department`` (the
    report's department) names a department step when the actor id does not.
    """
    by = by or ""
    if by and by == worker_id:
        return "me", by
    if role == "command":
        return "command", by
    if role == "department":
        return "department", by if by in departments else (department or "")
    if by in _COMMAND_IDS or by.startswith("cc-"):
        return "command", by
    if by in departments:
        return "department", by
    if by.startswith("dept-"):
        return "department", ""
    return "other", by


def short_time(iso: str | None, today: date | None = None, tz: tzinfo | None = None) -> str:
    """``03-05 10:22`` (this year) or ``2024-03-05 10:22``, in local time; ``""`` if unreadable."""
    if not iso:
        return ""
    try:
        at = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return ""
    if at.tzinfo is not None:
        at = at.astimezone(tz)
    today = today or date.today()
    return at.strftime("%m-%d %H:%M" if at.year == today.year else "%Y-%m-%d %H:%M")


def worker_actions(status: str | None) -> list[str]:
    """The statuses a worker may move an existing report to from ``status`` (for buttons)."""
    if not status:
        return []
    return [new for new in allowed_next(WORKER, status) if transition_allowed(WORKER, status, new)]


_MOVE = "report-move:"


def set_report_status(store: Store, report_id: str, new: str, at: str | None = None) -> None:
    """Write a worker's status move (confirm, reopen), remembering on this tablet when it was made.

    Raises :class:`fieldsync.ValidationError` (field ``status``) when a worker
    may not make this move from the report's current status; the server
    checks the same rule and would refuse it.
    """
    old = store.get("reports", report_id).get("status")
    if old == new or not transition_allowed(WORKER, old, new):
        raise fieldsync.ValidationError("reports", "status", f"a worker may not move a report from {old} to {new}")
    with store.atomic():
        store.put("reports", {"id": report_id, "status": new})
        store.put_local(_MOVE + report_id, {"status": new, "at": at or datetime.now().astimezone().isoformat(
            timespec="seconds")})


def my_move(store: Store, report_id: str) -> dict[str, Any] | None:
    """The last status move made on this tablet for a report (``{"status", "at"}``), if any."""
    value = store.get_local(_MOVE + report_id)
    return value if isinstance(value, dict) else None


def describe_location(location: Any) -> str:
    """A location as one line: the typed place, else ``lat, lon``."""
    if isinstance(location, str):
        return location
    if isinstance(location, dict):
        place = location.get("place")
        if isinstance(place, str) and place.strip():
            return place
        lat, lon = location.get("lat"), location.get("lon")
        if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
            return f"{lat:.5f}, {lon:.5f}"
    return ""


def task_household(task: dict[str, Any]) -> str | None:
    """The household a task is about, if it names one (``related.household_id``)."""
    related = task.get("related")
    if isinstance(related, dict) and isinstance(related.get("household_id"), str):
        return related["household_id"]
    return None
