"""Reconciliation jobs on both backends: results, idempotence, and safety while devices sync."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner
from serverkit import assert_matches_server, call, grid_state, household, json_of, rows

from fieldsync.schema import valid_id_number
from server_stub import jobs
from server_stub.cli import main as server_cli
from server_stub.replica import Actor

W1 = Actor("w1", "worker", frozenset({"g1"}))
W3 = Actor("w3", "worker", frozenset({"g2"}))
CC = Actor("cc", "command")
NOW = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def report(grid: str, category: str, n: int = 0, **extra: object) -> dict[str, object]:
    return {"grid_id": grid, "category": category, "description": f"花园山{n}栋楼道问题", "status": "submitted",
            "reporter_id": "w1", "reported_at": "2025-02-28T10:00:00+08:00", **extra}


def snapshot(district) -> list[tuple[object, ...]]:
    """Everything a job could change: records, departures, grid counters."""
    return (rows(district, "SELECT collection, id, grid, server_seq, deleted, digest, body FROM records "
                           "ORDER BY collection, id")
            + rows(district, "SELECT 'dep', grid, server_seq, collection, id, 0, '' FROM departures ORDER BY grid, server_seq")
            + rows(district, "SELECT 'grid', grid, seq, checksum, 0, 0, '' FROM grid_state ORDER BY grid"))


def id_number(seed: int) -> str:
    base = f"42010619{80 + seed % 20:02d}0101{seed % 1000:03d}"
    for check in "0123456789X":
        if valid_id_number(base + check):
            return base + check
    raise AssertionError("no check digit")


def test_dispatch_routes_by_category_sets_due_and_is_idempotent(district, tmp_path):
    district.write(W1, "reports", "r-ad", report("g1", "违规张贴广告", 1))
    district.write(W1, "reports", "r-food", report("g1", "食品安全", 2))
    district.write(W3, "reports", "r-ill", report("g2", "突发疾病", 3))
    district.write(W1, "reports", "r-other", report("g1", "其他", 4))
    first = jobs.run("dispatch", district, now=NOW)
    assert first["dispatched"] == 3 and first["unrouted"] == 1
    assert first["by_department"] == {"城管": 1, "食药监": 1, "医院": 1}
    ad = district.get("reports", "r-ad")
    assert ad["status"] == "dispatched" and ad["department"] == "城管"
    assert datetime.fromisoformat(ad["due_at"]) == NOW + timedelta(hours=72)
    assert datetime.fromisoformat(district.get("reports", "r-ill")["due_at"]) == NOW + timedelta(hours=2)
    steps = ad["timeline"]
    assert [s["status"] for s in steps] == ["submitted", "dispatched"]
    assert steps[-1]["by"] == "job:dispatch" and steps[-1]["role"] == "job" and steps[-1]["department"] == "城管"
    assert district.get("reports", "r-other")["status"] == "submitted", "no rule: waits for the command centre"

    before = snapshot(district)
    again = jobs.run("dispatch", district, now=NOW + timedelta(hours=1))
    assert again["dispatched"] == 0
    assert snapshot(district) == before, "a second run changes nothing"

    # A rules file overrides one category and adds another.
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"categories": {"其他": {"department": "民政", "hours": 12}}}), encoding="utf-8")
    result = jobs.run("dispatch", district, rules=jobs.DispatchRules.load(rules), now=NOW)
    assert result["by_department"] == {"民政": 1}
    assert datetime.fromisoformat(district.get("reports", "r-other")["due_at"]) == NOW + timedelta(hours=12)
    assert "dispatch" in jobs.last_runs(district)


def test_dispatch_sends_a_reopened_report_back_and_leaves_others_alone(district):
    district.write(W1, "reports", "r1", report("g1", "占道经营"))
    jobs.run("dispatch", district, now=NOW)
    for status in ("in_progress", "resolved"):
        district.write(Actor("dept-cg", "department"), "reports", "r1", {"status": status})
    district.write(W1, "reports", "r1", {"status": "reopened"})
    district.write(W1, "reports", "r2", report("g1", "占道经营"))
    district.write(CC, "reports", "r2", {"status": "rejected"})
    result = jobs.run("dispatch", district, now=NOW)
    assert result["dispatched"] == 1
    r1 = district.get("reports", "r1")
    assert r1["status"] == "dispatched" and r1["department"] == "城管"
    assert [s["status"] for s in r1["timeline"]] == ["submitted", "dispatched", "in_progress", "resolved", "reopened",
                                                     "dispatched"]
    assert district.get("reports", "r2")["status"] == "rejected"


def test_escalate_flags_overdue_reports_and_tasks_without_touching_status(district):
    district.write(W1, "reports", "late", report("g1", "安全隐患"))
    district.write(W1, "reports", "fresh", report("g1", "安全隐患", 2))
    jobs.run("dispatch", district, now=NOW - timedelta(days=2))  # late: due a day ago
    district.write(CC, "reports", "fresh", {"status": "dispatched", "department": "公安",
                                            "due_at": (NOW + timedelta(days=1)).isoformat()})
    district.write(W1, "reports", "done", report("g1", "安全隐患", 3))
    district.write(CC, "reports", "done", {"status": "dispatched", "department": "公安",
                                           "due_at": (NOW - timedelta(days=3)).isoformat()})
    district.write(Actor("p", "department"), "reports", "done", {"status": "resolved"})
    district.write(CC, "tasks", "t-late", {"grid_id": "g1", "assignee": "w1", "kind": "回访", "due": "2025-02-20",
                                           "status": "open"})
    district.write(CC, "tasks", "t-ok", {"grid_id": "g1", "assignee": "w1", "kind": "回访", "due": "2025-03-05",
                                         "status": "open"})
    result = jobs.run("escalate", district, now=NOW)
    assert result == {"escalated": {"reports": 1, "tasks": 1}}
    late = district.get("reports", "late")
    assert late["escalated"] is True and late["status"] == "dispatched"
    assert not district.get("reports", "fresh").get("escalated")
    assert not district.get("reports", "done").get("escalated"), "a resolved report is not overdue"
    assert district.get("tasks", "t-late")["escalated"] is True and district.get("tasks", "t-late")["status"] == "open"
    before = snapshot(district)
    assert jobs.run("escalate", district, now=NOW) == {"escalated": {"reports": 0, "tasks": 0}}
    assert snapshot(district) == before


def test_duplicates_open_one_review_task_per_id_number_and_never_merge(district):
    same, other = id_number(1), id_number(2)
    district.write_many(CC, "households", [{"id": "h1", **household("g1", 1)}, {"id": "h2", **household("g1", 2)},
                                           {"id": "h3", **household("g2", 3)}])
    people = [
        {"id": "p1", "grid_id": "g1", "household_id": "h1", "name": "张三", "id_number": same},
        {"id": "p2", "grid_id": "g2", "household_id": "h3", "name": "张三", "id_number": same.lower()},
        {"id": "p3", "grid_id": "g1", "household_id": "h2", "name": "李四", "id_number": other},
        {"id": "p4", "grid_id": "g1", "household_id": "h2", "name": "李四", "id_number": other},  # same household
    ]
    district.write_many(CC, "residents", people)
    residents_before = rows(district, "SELECT id, body FROM records WHERE collection = 'residents' ORDER BY id")
    result = jobs.run("duplicates", district)
    assert result == {"duplicates": 1, "tasks_created": 1, "tasks_updated": 0}
    tasks = [t for t in (district.get("tasks", tid) for (tid,) in
                         rows(district, "SELECT id FROM records WHERE collection = 'tasks'"))]
    assert len(tasks) == 1
    task = tasks[0]
    assert task["assignee"] == jobs.COMMAND_ASSIGNEE and task["kind"] == "duplicate_resident" and task["grid_id"] == "g1"
    assert task["related"] == {"residents": ["p1", "p2"], "households": ["h1", "h3"], "grids": ["g1", "g2"]}
    assert same not in json.dumps(task) and same not in task["id"], "no ID number in the task"
    assert rows(district, "SELECT id, body FROM records WHERE collection = 'residents' ORDER BY id") == residents_before
    before = snapshot(district)
    assert jobs.run("duplicates", district)["tasks_created"] == 0
    assert snapshot(district) == before


def test_coverage_counts_households_visited_in_30_days(district):
    district.write_many(CC, "households", [{"id": f"h{i}", **household("g1" if i < 4 else "g2", i)} for i in range(6)])
    visits = [("h0", "w1", 2), ("h0", "w2", 5), ("h1", "w1", 29), ("h2", "w1", 45), ("h4", "w3", 1)]
    district.write_many(CC, "visits", [
        {"id": f"v{i}", "grid_id": "g1" if h < "h4" else "g2", "household_id": h, "worker_id": w,
         "visited_at": (NOW - timedelta(days=d)).isoformat(), "purpose": "独居老人探访"}
        for i, (h, w, d) in enumerate(visits)])
    result = jobs.run("coverage", district, now=NOW)
    assert result["grids"] == {"g1": {"households": 4, "visited": 2}, "g2": {"households": 2, "visited": 1}}
    table = {(r["grid"], r["worker_id"]): (r["visited"], r["visits"]) for r in jobs.coverage_rows(district)}
    assert table == {("g1", ""): (2, 3), ("g1", "w1"): (2, 2), ("g1", "w2"): (1, 1), ("g2", ""): (1, 1),
                     ("g2", "w3"): (1, 1)}
    jobs.run("coverage", district, now=NOW)
    assert {(r["grid"], r["worker_id"]): (r["visited"], r["visits"]) for r in jobs.coverage_rows(district)} == table


def test_compact_removes_what_active_devices_acknowledged_and_devices_converge(district, make_device):
    dev = make_device("w1")
    other = make_device("w2")
    ids = [dev.store.put("households", household("g1", i)) for i in range(6)]
    dev.sync()
    other.sync()
    for rid in ids[:3]:
        dev.store.delete("households", rid)
    dev.sync()
    # w2's device still acknowledged only the old cursor: nothing can go yet.
    assert jobs.run("compact", district)["tombstones"] == 0
    other.sync()  # receives the deletes; its next pull acknowledges them
    other.sync()
    dev.sync()
    seq_before, _ = grid_state(district, "g1")
    result = jobs.run("compact", district)
    assert result["tombstones"] == 3
    assert rows(district, "SELECT COUNT(*) FROM records WHERE deleted = 1") == [(0,)]
    assert grid_state(district, "g1")[0] == seq_before, "compaction does not advance the counter"
    assert jobs.run("compact", district)["tombstones"] == 0, "a second run removes nothing more"
    # Devices holding the tombstones see the checksum change and drop them by bucket repair.
    for d in (dev, other):
        d.sync()
        assert_matches_server(d.store, district)
        assert d.store.outbox_size() == 0


def test_a_device_behind_the_compaction_mark_gets_a_snapshot_and_keeps_its_outbox(district, make_device, inproc):
    active = make_device("w1")
    behind = make_device("w2")
    ids = [active.store.put("households", household("g1", i)) for i in range(5)]
    active.sync()
    behind.sync()
    first_cursor = behind.store.cursors()["g1"]
    for rid in ids[:2]:
        active.store.delete("households", rid)
    active.store.put("households", household("g1", 9))
    active.sync()
    active.sync()
    # The lagging device is inactive: it does not hold compaction back.
    with district.db.transaction() as tx:
        tx.execute("UPDATE devices SET last_seen_ms = 0, enrolled_ms = 0 WHERE id = ?", (behind.device_id,))
    assert jobs.run("compact", district)["tombstones"] == 2
    mark = rows(district, "SELECT below FROM compaction_marks WHERE grid = 'g1'")[0][0]
    assert first_cursor < mark

    # A snapshot-aware pull below the mark restarts the grid at 0, once.
    page = json_of(call(inproc, behind.identity, "/v1/pull",
                        {"schema_version": 1, "cursors": {"g1": first_cursor}, "limit": 2, "snapshots": True}))
    assert page["snapshot"] == ["g1"]
    assert min(c["server_seq"] for c in page["changes"]) <= first_cursor, "the page starts from 0"
    nxt = json_of(call(inproc, behind.identity, "/v1/pull",
                       {"schema_version": 1, "cursors": {"g1": page["cursors"]["g1"]}, "limit": 2, "snapshots": True}))
    assert "snapshot" not in nxt and all(c["server_seq"] > page["cursors"]["g1"] for c in nxt["changes"])

    # The real client (version 1, no snapshots) converges too, and its unsynced work survives.
    mine = behind.store.put("households", household("g1", 42))
    behind.sync()
    assert_matches_server(behind.store, district)
    assert district.get("households", mine) is not None
    assert not {r["id"] for r in behind.store.list("households")} & set(ids[:2]), "the compacted deletes reached it"


def test_jobs_run_while_a_device_syncs(district, make_device):
    dev = make_device("w1")
    stop = threading.Event()
    errors: list[BaseException] = []
    made: list[str] = []

    def field_work() -> None:
        try:
            n = 0
            while not stop.is_set() or n < 6:
                rid = dev.store.put("reports", {"grid_id": "g1", "category": "占道经营", "description": f"摊贩{n}",
                                                "status": "submitted", "reporter_id": "w1"})
                made.append(rid)
                if n % 3 == 0 and made:
                    dev.store.delete("households", dev.store.put("households", household("g1", n)))
                dev.sync()
                n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=field_work)
    worker.start()
    try:
        for _ in range(3):
            for name in ("dispatch", "escalate", "duplicates", "coverage", "compact"):
                jobs.run(name, district)
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors
    jobs.run("dispatch", district)
    dev.sync()
    assert dev.store.outbox_size() == 0 and not dev.store.rejections()
    assert_matches_server(dev.store, district)
    for rid in made:
        r = district.get("reports", rid)
        assert r["status"] == "dispatched", rid
        assert [s["status"] for s in r["timeline"]].count("dispatched") == 1, "dispatched exactly once"


def test_jobs_and_user_commands(db_url, district):
    district.write(W1, "reports", "r1", report("g1", "居民求助"))
    runner = CliRunner()
    out = runner.invoke(server_cli, ["jobs", "run", "dispatch", "--db", db_url])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["by_department"] == {"民政": 1}
    for name in ("escalate", "duplicates", "compact", "coverage"):
        out = runner.invoke(server_cli, ["jobs", "run", name, "--db", db_url])
        assert out.exit_code == 0, out.output
    out = runner.invoke(server_cli, ["jobs", "list"])
    assert out.exit_code == 0 and "duplicates" in out.output
    out = runner.invoke(server_cli, ["user", "set-password", "--db", db_url, "--user", "cc", "--password-stdin"],
                        input="correct horse battery\n")
    assert out.exit_code == 0, out.output
    stored = rows(district, "SELECT password_hash FROM workers WHERE id = 'cc'")[0][0]
    assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored
    out = runner.invoke(server_cli, ["user", "set-password", "--db", db_url, "--user", "w1", "--password-stdin"],
                        input="correct horse battery\n")
    assert out.exit_code != 0 and "only command and department staff" in out.output
