"""What the console reads: reports with filters, names of grids and people, the review queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fieldsync.merge import DELETED

from ..accounts import Staff
from ..district import District
from ..jobs import COMMAND_ASSIGNEE, DEFAULT_RULES, OPEN_REPORT
from ..replica import load_state

__all__ = ["ReportFilter", "list_reports", "get_report", "visible_to", "grid_names", "people", "departments",
           "categories", "is_overdue", "fmt_time", "review_items", "workers"]


def fmt_time(iso: Any) -> str:
    """``2024-05-31 09:30`` in the server's local time; ``""`` if unreadable."""
    if not isinstance(iso, str) or not iso:
        return ""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if at.tzinfo is not None:
        at = at.astimezone()
    return at.strftime("%Y-%m-%d %H:%M")


def is_overdue(report: dict[str, Any], now: datetime | None = None) -> bool:
    due = report.get("due_at")
    if report.get("status") not in OPEN_REPORT or not isinstance(due, str):
        return False
    try:
        at = datetime.fromisoformat(due)
    except ValueError:
        return False
    if at.tzinfo is None:
        at = at.astimezone()
    return at < (now or datetime.now(timezone.utc))


def visible_to(staff: Staff, report: dict[str, Any]) -> bool:
    """The command centre sees every report; a department only those dispatched to it."""
    if staff.role == "command":
        return True
    return staff.role == "department" and bool(staff.department) and report.get("department") == staff.department


def _records(district: District, collection: str) -> list[dict[str, Any]]:
    with district.db.transaction() as tx:
        rows = tx.all("SELECT id, grid, body FROM records WHERE collection = ? AND deleted = 0", (collection,))
    out = []
    for rid, grid, body in rows:
        state = load_state(body)
        out.append({**{k: w.value for k, w in state.items() if k != DELETED}, "id": rid, "_grid": grid})
    return out


def get_report(district: District, rid: str) -> dict[str, Any] | None:
    """A live report's values (``_grid`` added), or None."""
    if len(rid) > 64:
        return None
    with district.db.transaction() as tx:
        row = tx.one("SELECT grid, body FROM records WHERE collection = 'reports' AND id = ? AND deleted = 0", (rid,))
    if row is None:
        return None
    state = load_state(row[1])
    return {**{k: w.value for k, w in state.items() if k != DELETED}, "id": rid, "_grid": row[0]}


@dataclass(frozen=True)
class ReportFilter:
    status: str = ""
    category: str = ""
    grid: str = ""
    overdue: bool = False

    def matches(self, r: dict[str, Any]) -> bool:
        return ((not self.status or r.get("status") == self.status)
                and (not self.category or r.get("category") == self.category)
                and (not self.grid or r.get("_grid") == self.grid)
                and (not self.overdue or is_overdue(r)))


def list_reports(district: District, staff: Staff, flt: ReportFilter, limit: int = 500) -> tuple[list[dict[str, Any]], int]:
    """The reports ``staff`` may see that match ``flt``, newest first: (at most ``limit``, total)."""
    found = [r for r in _records(district, "reports") if visible_to(staff, r) and flt.matches(r)]
    found.sort(key=lambda r: str(r.get("reported_at") or ""), reverse=True)
    return found[:limit], len(found)


def grid_names(district: District) -> dict[str, str]:
    return {g["id"]: str(g.get("name") or g["id"]) for g in _records(district, "grids")}


def people(district: District) -> dict[str, str]:
    """Worker and staff id -> name."""
    with district.db.transaction() as tx:
        return {r[0]: r[1] for r in tx.all("SELECT id, name FROM workers")}


def workers(district: District) -> list[tuple[str, str]]:
    """Grid workers (role worker): (id, name), by id."""
    with district.db.transaction() as tx:
        return [(r[0], r[1]) for r in tx.all("SELECT id, name FROM workers WHERE role = 'worker' ORDER BY id")]


def departments(district: District) -> list[str]:
    """Departments reports can go to: those with staff, and those the dispatch rules name."""
    with district.db.transaction() as tx:
        named = {r[0] for r in tx.all("SELECT DISTINCT department FROM workers WHERE role = 'department' "
                                      "AND department IS NOT NULL")}
    order = [r.department for r in DEFAULT_RULES.values()]
    names = list(dict.fromkeys([*order, *sorted(named)]))
    return names


def categories(reports: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys([*DEFAULT_RULES, *sorted({str(r.get("category")) for r in reports if r.get("category")})]))


def review_items(district: District) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(open duplicate-resident tasks for the command centre, escalated open reports and tasks)."""
    tasks = _records(district, "tasks")
    dups = [t for t in tasks if t.get("assignee") == COMMAND_ASSIGNEE and t.get("kind") == "duplicate_resident"
            and t.get("status", "open") == "open"]
    escalated = [r for r in _records(district, "reports") if r.get("escalated") and r.get("status") in OPEN_REPORT]
    escalated += [t for t in tasks if t.get("escalated") and t.get("status", "open") == "open"]
    return dups, escalated
