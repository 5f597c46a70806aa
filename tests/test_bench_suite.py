"""The benchmark suite (``python -m bench``) for real: its cheapest part, the files it writes, failure handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import suite

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_store_run_writes_json_and_markdown(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "store", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))

    m = record["machine"]
    for key in ("cpu", "cores", "cores_usable", "ram_gb", "python", "sqlite", "postgresql", "platform"):
        assert key in m, key
    assert m["cpu"] and m["cores"] >= 1 and m["ram_gb"] > 0 and m["sqlite"] and m["python"]
    assert len(m["loadavg_before"]) == 3 and len(m["loadavg_after"]) == 3
    assert len(m["git"]["commit"]) == 40

    assert record["suite"] == {**record["suite"], "quick": True, "parts": ["store"], "failed": []}
    part = record["parts"]["store"]
    assert part["status"] == "ok", part
    rows = part["table"]
    assert rows and all(set(r) == set(suite.ROW_KEYS) for r in rows)
    ratios = [r["ratio"] for r in rows if isinstance(r["ratio"], (int, float))]
    assert ratios and all(x > 0 for x in ratios)
    assert any(r["met"] in (True, False) and r["goal"] for r in rows)
    assert part["result"]["benchmark"] == "fieldsync.store"

    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "## Machine" in md and m["cpu"] in md and f"| SQLite | {m['sqlite']} |" in md
    assert "load average before" in md and "## store" in md
    assert "| metric | value | unit | baseline / peer | ratio | goal | met |" in md
    assert rows[0]["metric"] in md


def test_a_missing_part_is_recorded_and_fails_the_run(tmp_path: Path) -> None:
    part = suite.run_part("no_such_part", True, tmp_path, 60, {"PATH": "/usr/bin:/bin"})
    assert part["status"] == "missing" and part["table"] == []
    assert "No module named 'bench.no_such_part'" in part["log_tail"]


def test_unknown_only_name_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "store,nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part(s) nope" in proc.stderr


def test_rows_without_a_table_come_from_goals() -> None:
    rows = suite.normalise_rows({"results": {"sqlite": {"goals": {"fast": {"value": 3.0, "met": True}}}}})
    assert rows == [{"metric": "results: sqlite: fast", "value": 3.0, "unit": "", "baseline": None, "ratio": None,
                     "goal": "fast", "met": True}]
    peer = suite.normalise_rows({"table": [{"metric": "x", "value": 1, "peer": "kinto 2/s", "ratio": 0.5}]})
    assert peer[0]["baseline"] == "kinto 2/s" and peer[0]["goal"] is None
    wide = suite.normalise_rows({"table": [{"system": "pouchdb", "push_records_per_s": 579, "note": "x"}],
                                 "ratios": [{"ours": "fieldsync", "peer": "pouchdb", "phase": "push", "ratio": 3.5,
                                             "goal": 3.0, "met": True}]})
    assert [(r["metric"], r["ratio"], r["met"]) for r in wide] == [
        ("push: fieldsync vs pouchdb", 3.5, True), ("pouchdb x: push_records_per_s", None, None)]
