"""The worker's inbox: tasks assigned to them and the reports they made, with status and timeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldsync import Store

__all__ = ["InboxItem", "inbox", "timeline"]


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
