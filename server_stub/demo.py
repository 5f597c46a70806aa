"""``fieldsync-server init-demo``: a demo district from the places of the seed article.

Four grids in three Wuchang communities (粮道街花园山社区, 黄鹤楼街道彭刘杨社区,
积玉桥街道金地花园社区), about 300 households each with residents, visits and
reports, the grid workers named in the article, the command centre
(网格化管理指挥中心) and the departments reports are dispatched to.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Callable

from . import demo_data
from .district import District
from .replica import Actor

__all__ = ["build_demo", "WORKERS", "STAFF", "DEPARTMENTS"]

# worker id, name, grid index in demo_data.GRIDS
WORKERS = (
    ("w-zhang", "小张", 0),
    ("w-lijing", "李璟", 1),
    ("w-wangmh", "汪明慧", 2),
    ("w-chenf", "陈芳", 3),
)
STAFF = (("cc-wangcc", "汪陈琛", "command"), ("cc-zhaowy", "赵文英", "command"))
DEPARTMENTS = ("城管", "食药监", "公安", "工商", "医院", "民政")


def build_demo(district: District, households_per_grid: int = 300, seed: int = 2019,
               progress: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Fill ``district`` with the demo; safe to run twice (records are upserted by id)."""
    job = Actor("init-demo", "admin")
    for wid, name, _ in WORKERS:
        district.add_worker(wid, name, "worker")
    for sid, name, role in STAFF:
        district.add_worker(sid, name, role)
    for i, dept in enumerate(DEPARTMENTS):
        district.add_worker(f"dept-{i + 1}", f"{dept}联络员", "department", dept)
    totals: dict[str, int] = {}
    for wid, name, gi in WORKERS:
        grid = demo_data.GRIDS[gi]["id"]
        district.assign(wid, grid)
        records = demo_data.grid_records(grid, households_per_grid, seed + gi, visits_per_household=3, n_reports=12)
        # Visits of the last 75 days, so "not visited in 30 days" marks some households, not all.
        records["visits"] = demo_data.visits(records["households"], 3, seed + gi, worker_id=wid,
                                             start=date.today() - timedelta(days=75), days=75)
        records["reports"] = demo_data.reports(12, grid, seed + gi, households=records["households"], reporter_id=wid,
                                               start=date.today() - timedelta(days=40), days=38)
        records["grids"][0]["workers"] = [wid]
        for v in records["visits"]:
            v["worker_id"] = wid
        for r in records["reports"]:
            r["reporter_id"] = wid
            for step in r.get("timeline", []):
                if step.get("by", "").startswith("w-"):
                    step["by"] = wid
        for collection, items in records.items():
            district.write_many(job, collection, items)
            totals[collection] = totals.get(collection, 0) + len(items)
        progress(f"grid {grid} ({demo_data.GRIDS[gi]['name']}, worker {name}): "
                 f"{len(records['households'])} households, {len(records['residents'])} residents")
    lines = [f"Demo district ready in {district.db.url.split('?')[0]}"]
    lines += [f"  {k:<11} {v:>6}" for k, v in totals.items()]
    lines.append("Workers: " + ", ".join(f"{wid} ({name})" for wid, name, _ in WORKERS))
    lines.append("Next: fieldsync-server enroll-code --db URL --worker w-lijing")
    return lines
