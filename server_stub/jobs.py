"""Reconciliation jobs: dispatch by rules, overdue escalation, duplicate residents, compaction, coverage.

Each job is a function of a :class:`~server_stub.district.District` that other server code can
call, and a command: ``fieldsync-server jobs run NAME --db URL``.  Every job is idempotent
(running it twice gives the same state as running it once) and safe while devices sync: record
changes go through guarded server writes (:func:`server_stub.reportflow.write_if`), which take
the grid counter before the record row like every writer, re-check the record under those
locks, and merge with server stamps through ``apply_writes`` — so the changes sync to devices,
and a report a device or the console moved meanwhile is left alone.

=============  ==========================================================================
``dispatch``   submitted/reopened reports → a department by category rules, ``due_at``
               from the category's time limit (rules overridable by a JSON file)
``escalate``   open reports past ``due_at`` and open tasks past ``due``: ``escalated: true``
``duplicates`` one resident ID number in two households: a review task for the command centre
``compact``    tombstones and departures all active devices acknowledged (see compaction.py)
``coverage``   households visited in the last 30 days, per grid and per worker
=============  ==========================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from fieldsync.merge import values_of
from fieldsync.schema import normalise
from fieldsync.workflow import transition_allowed

from . import audit, compaction
from .auth import ApiError
from .district import District
from .replica import Actor, load_state
from .reportflow import dispatch as dispatch_report
from .reportflow import now_iso, write_if

__all__ = ["JOBS", "run", "dispatch", "escalate", "duplicates", "compact", "coverage", "DispatchRules",
           "DEFAULT_RULES", "COMMAND_ASSIGNEE", "last_runs", "coverage_rows", "live_records"]

COMMAND_ASSIGNEE = "command"  # tasks for the command centre (not a worker: no tablet lists them)
OPEN_REPORT = ("dispatched", "in_progress")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.astimezone()  # naive: server local time


def live_records(district: District, collection: str) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """(id, grid, values) of every live record of ``collection`` (read in one snapshot)."""
    with district.db.transaction() as tx:
        rows = tx.all("SELECT id, grid, body FROM records WHERE collection = ? AND deleted = 0 ORDER BY id",
                      (collection,))
    for rid, grid, body in rows:
        yield rid, grid, {"id": rid, **values_of(load_state(body))}


# -- dispatch ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    department: str
    hours: float


# Category -> (department, hours to resolve).  The departments of the seed article.
DEFAULT_RULES: dict[str, Rule] = {
    "违规张贴广告": Rule("城管", 72),
    "占道经营": Rule("城管", 48),
    "安全隐患": Rule("公安", 24),
    "食品安全": Rule("食药监", 48),
    "无证经营": Rule("工商", 72),
    "居民求助": Rule("民政", 24),
    "突发疾病": Rule("医院", 2),
}


@dataclass(frozen=True)
class DispatchRules:
    """Category → department and time limit.  Categories without a rule wait for the command centre."""

    rules: Mapping[str, Rule]

    @classmethod
    def default(cls) -> "DispatchRules":
        return cls(dict(DEFAULT_RULES))

    @classmethod
    def load(cls, path: str | Path) -> "DispatchRules":
        """The default table overridden by a JSON file::

            {"categories": {"占道经营": {"department": "城管", "hours": 24},
                            "噪音扰民": {"department": "公安", "hours": 12},
                            "违规张贴广告": null}}

        ``null`` removes a default rule (those reports then wait for the command centre).
        Raises ValueError naming the problem.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read dispatch rules {path}: {exc}") from None
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, dict):
            raise ValueError(f"{path}: expected an object with \"categories\"")
        rules = dict(DEFAULT_RULES)
        for category, rule in cats.items():
            if rule is None:
                rules.pop(category, None)
                continue
            if not isinstance(rule, dict) or not isinstance(rule.get("department"), str) or not rule["department"]:
                raise ValueError(f"{path}: categories.{category} needs a \"department\"")
            hours = rule.get("hours", 72)
            if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= 24 * 365:
                raise ValueError(f"{path}: categories.{category}.hours must be a number of hours (0-8760]")
            rules[category] = Rule(rule["department"], float(hours))
        return cls(rules)

    def route(self, category: Any) -> Rule | None:
        return self.rules.get(category) if isinstance(category, str) else None


def dispatch(district: District, rules: DispatchRules | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Route every submitted or reopened report with a rule to its department, due after the time limit.

    A reopened report goes back to the department the rule names (the command centre can
    re-route it in the console).  The job writes as ``Actor("job:dispatch", "job")`` where the
    workflow lets the job role move the report, and as the command centre's standing rules
    (role ``command``) where only that role may (``reopened → dispatched``).
    """
    rules = rules or DispatchRules.default()
    at = now or _now()
    done: dict[str, int] = {}
    unrouted = 0
    for rid, _grid, report in live_records(district, "reports"):
        status = report.get("status")
        if status not in ("submitted", "reopened"):
            continue
        rule = rules.route(report.get("category"))
        if rule is None:
            unrouted += 1
            continue
        role = "job" if transition_allowed("job", status, "dispatched") else "command"
        due = now_iso(at + timedelta(hours=rule.hours))
        try:
            wrote = dispatch_report(district, Actor("job:dispatch", role), rid, rule.department, due,
                                    only_from=("submitted", "reopened"), now=at)
        except ApiError as exc:
            if exc.code in ("report_unknown", "transition_not_allowed"):
                continue  # deleted or moved meanwhile
            raise
        if wrote:
            done[rule.department] = done.get(rule.department, 0) + 1
    return {"dispatched": sum(done.values()), "by_department": done, "unrouted": unrouted}


# -- escalate ---------------------------------------------------------------------------------

def escalate(district: District, now: datetime | None = None) -> dict[str, Any]:
    """Flag open reports past ``due_at`` and open tasks past ``due`` with ``escalated: true``.

    Never changes a status.  The flag syncs to the grid's devices and the console lists flagged
    items for the command centre; a new dispatch (new deadline) clears it on a report.
    """
    at = now or _now()
    actor = Actor("job:escalate", "job")
    counts = {"reports": 0, "tasks": 0}

    def flag(collection: str, still_overdue: Callable[[dict[str, Any]], bool]) -> Callable[..., Any]:
        def decide(current: dict[str, Any] | None) -> Mapping[str, Any] | None:
            if current is None or current.get("_deleted") or current.get("escalated") or not still_overdue(current):
                return None
            return {"escalated": True, "escalated_at": now_iso(at)}
        return decide

    def report_overdue(r: dict[str, Any]) -> bool:
        due = _parse_time(r.get("due_at"))
        return r.get("status") in OPEN_REPORT and due is not None and due < at

    def task_overdue(t: dict[str, Any]) -> bool:
        due = t.get("due")
        return t.get("status", "open") == "open" and isinstance(due, str) and due < at.astimezone().date().isoformat()

    for collection, overdue in (("reports", report_overdue), ("tasks", task_overdue)):
        for rid, _grid, values in live_records(district, collection):
            if values.get("escalated") or not overdue(values):
                continue
            if write_if(district, actor, collection, rid, flag(collection, overdue)):
                counts[collection] += 1
    return {"escalated": counts}


# -- duplicates -------------------------------------------------------------------------------

def _duplicate_key(district: District) -> bytes:
    """A random server secret for the ids of duplicate tasks (an ID number's plain hash could be reversed)."""
    with district.db.transaction() as tx:
        tx.execute("INSERT INTO server_meta (key, value) VALUES ('duplicate_key', ?) ON CONFLICT (key) DO NOTHING",
                   (secrets.token_hex(32),))
        row = tx.one("SELECT value FROM server_meta WHERE key = 'duplicate_key'")
    assert row is not None
    return bytes.fromhex(row[0])


def duplicates(district: District, now: datetime | None = None) -> dict[str, Any]:
    """One resident ID number registered in two or more households (or grids): a review task.

    Creates (or updates) one ``tasks`` record per ID number, assigned to the command centre
    (``assignee: "command"``), kind ``duplicate_resident``, in the grid of the first household,
    with ``related`` = the resident, household and grid ids (no ID number, no name).  Never
    merges or changes the residents.  A task closed by the command centre stays closed.
    """
    key = _duplicate_key(district)
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for rid, grid, person in live_records(district, "residents"):
        number = person.get("id_number")
        if isinstance(number, str) and number.strip():
            groups.setdefault(normalise("id_number", number), []).append((rid, grid, str(person.get("household_id"))))
    actor = Actor("job:duplicates", "job")
    created = updated = 0
    found = 0
    for number, people in sorted(groups.items()):
        if len({h for _, _, h in people}) < 2:
            continue
        found += 1
        people.sort(key=lambda p: (p[1], p[2], p[0]))
        tid = "dup-" + hmac.new(key, number.encode(), hashlib.sha256).hexdigest()[:28]
        related = {"residents": [p[0] for p in people], "households": sorted({p[2] for p in people}),
                   "grids": sorted({p[1] for p in people})}
        grid = people[0][1]
        title = f"身份证号重复登记（{len(related['households'])} 户）"

        def decide(current: dict[str, Any] | None, related: dict[str, Any] = related, grid: str = grid,
                   title: str = title) -> Mapping[str, Any] | None:
            if current is None:
                return {"grid_id": grid, "assignee": COMMAND_ASSIGNEE, "kind": "duplicate_resident",
                        "title": title, "related": related, "status": "open"}
            if current.get("status", "open") != "open" or current.get("related") == related:
                return None
            return {"related": related, "title": title}

        existed = district.get("tasks", tid) is not None
        if write_if(district, actor, "tasks", tid, decide, grid=grid):
            if existed:
                updated += 1
            else:
                created += 1
    return {"duplicates": found, "tasks_created": created, "tasks_updated": updated}


# -- compact ----------------------------------------------------------------------------------

def compact(district: District, active_days: int = compaction.ACTIVE_DAYS, now: datetime | None = None) -> dict[str, Any]:
    """Remove tombstones and departures below the lowest cursor acknowledged by active devices."""
    now_ms = int((now or _now()).timestamp() * 1000)
    results = compaction.compact(district.db, active_days=active_days, now_ms=now_ms)
    return {"grids": [r.to_json() for r in results], "tombstones": sum(r.tombstones for r in results),
            "departures": sum(r.departures for r in results)}


# -- coverage ---------------------------------------------------------------------------------

def coverage(district: District, days: int = 30, now: datetime | None = None) -> dict[str, Any]:
    """Households visited in the last ``days`` days per grid (worker ``""``) and per worker.

    Replaces the ``coverage`` table in one transaction; the console shows it.
    """
    at = now or _now()
    since = at - timedelta(days=days)
    households: dict[str, set[str]] = {}
    for rid, grid, _ in live_records(district, "households"):
        households.setdefault(grid, set()).add(rid)
    visited: dict[tuple[str, str], set[str]] = {}
    visits: dict[tuple[str, str], int] = {}
    for _rid, grid, visit in live_records(district, "visits"):
        when = _parse_time(visit.get("visited_at"))
        if when is None or not since <= when <= at + timedelta(days=1):
            continue
        hid = visit.get("household_id")
        if not isinstance(hid, str) or hid not in households.get(grid, ()):
            continue
        for who in ("", str(visit.get("worker_id") or "")):
            visited.setdefault((grid, who), set()).add(hid)
            visits[(grid, who)] = visits.get((grid, who), 0) + 1
    rows = []
    for grid in sorted(households):
        total = len(households[grid])
        keys = [(grid, "")] + sorted(k for k in visited if k[0] == grid and k[1])
        for key in keys:
            rows.append((grid, key[1], total, len(visited.get(key, ())), visits.get(key, 0), days))
    computed = int(at.timestamp() * 1000)
    with district.db.transaction() as tx:
        tx.execute("DELETE FROM coverage")
        tx.executemany("INSERT INTO coverage (grid, worker_id, households, visited, visits, days, computed_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", [(*r, computed) for r in rows])
    grids = {r[0]: {"households": r[2], "visited": r[3]} for r in rows if r[1] == ""}
    return {"days": days, "grids": grids, "rows": len(rows)}


def coverage_rows(district: District) -> list[dict[str, Any]]:
    """The stored coverage table (what the last ``coverage`` run computed)."""
    with district.db.transaction() as tx:
        rows = tx.all("SELECT grid, worker_id, households, visited, visits, days, computed_ms FROM coverage "
                      "ORDER BY grid, worker_id")
    keys = ("grid", "worker_id", "households", "visited", "visits", "days", "computed_ms")
    return [dict(zip(keys, r)) for r in rows]


# -- running ----------------------------------------------------------------------------------

JOBS: dict[str, Callable[..., dict[str, Any]]] = {
    "dispatch": dispatch,
    "escalate": escalate,
    "duplicates": duplicates,
    "compact": compact,
    "coverage": coverage,
}


def run(name: str, district: District, **options: Any) -> dict[str, Any]:
    """Run job ``name`` with its options; records the run (``job_runs``) and audits it.

    Raises KeyError for an unknown job name.
    """
    job = JOBS[name]
    started = time.time_ns() // 1_000_000
    result = job(district, **options)
    finished = time.time_ns() // 1_000_000
    text = json.dumps(result, ensure_ascii=False, sort_keys=True)
    with district.db.transaction() as tx:
        tx.execute("INSERT INTO job_runs (name, started_ms, finished_ms, result) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET started_ms = excluded.started_ms, "
                   "finished_ms = excluded.finished_ms, result = excluded.result", (name, started, finished, text))
        audit.append(tx, f"job:{name}", "job.run", f"job:{name}", {"ms": finished - started})
    return result


def last_runs(district: District) -> dict[str, dict[str, Any]]:
    """The last run of each job: name -> {started_ms, finished_ms, result}."""
    with district.db.transaction() as tx:
        rows = tx.all("SELECT name, started_ms, finished_ms, result FROM job_runs ORDER BY name")
    return {n: {"started_ms": int(s), "finished_ms": int(f), "result": json.loads(r)} for n, s, f, r in rows}
