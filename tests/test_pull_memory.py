"""A device's memory stays flat while it pulls a large grid (a real server, a fresh child process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import growth
from bench import sync as bsync
from server_stub.district import District

RECORDS = 20_000


@pytest.mark.slow
def test_pulling_20000_records_grows_rss_by_less_than_50_mb(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'district.db'}"
    district = District(db)
    try:
        data = bsync.big_grid("wc-mem-grid", RECORDS, seed=3)
        district.add_worker("w-mem", "网格员")
        district.assign("w-mem", "wc-mem-grid")
        assert bsync._load(district, data) == RECORDS
        del data
        code, _ = district.issue_code("w-mem")
        server = bsync.Server(db, tmp_path / "server.log")
        try:
            mem = growth.pull_memory(server.url, code, RECORDS, tmp_path, timeout=300)
        finally:
            server.stop()
    finally:
        district.close()
    assert mem["pulled"] == RECORDS
    assert mem["samples"] > 10, mem  # the RSS sampler ran during the pull
    # Memory, not time: the growth of the pulling process's resident set, peak minus before.
    assert mem["rss_growth_mb"] < growth.PULL_RSS_GOAL_MB, (
        f"RSS grew {mem['rss_growth_mb']} MB pulling {RECORDS:,} records "
        f"(by page: {mem['rss_by_page_mb']}); run python -m bench.growth --trace to see where")
