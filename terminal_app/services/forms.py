"""Forms a worker fills in (visit, incident report) and their drafts.

A draft is saved, encrypted and on this device only, as the worker types;
it survives the app being killed and a failed sync, and is cleared only
when the record it became has been saved.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import fieldsync
from fieldsync import Store

__all__ = ["Drafts", "VISIT_PURPOSES", "VISIT_NEEDS", "REPORT_CATEGORIES", "suggest_department",
           "save_visit", "save_report", "now_iso"]

VISIT_PURPOSES = ("社保年审", "低保复核", "独居老人探访", "政策宣传", "矛盾调解")
VISIT_NEEDS = ("助餐", "就业介绍", "医疗救助", "家政服务", "房屋维修", "心理疏导")

# Category -> the department the command centre usually dispatches it to.
REPORT_CATEGORIES: dict[str, str] = {
    "违规张贴广告": "城管",
    "占道经营": "城管",
    "安全隐患": "公安",
    "食品安全": "食药监",
    "无证经营": "工商",
    "居民求助": "民政",
    "突发疾病": "医院",
}


def suggest_department(category: str) -> str | None:
    return REPORT_CATEGORIES.get(category)


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class Drafts:
    """Encrypted, device-only drafts, one per form name."""

    PREFIX = "draft:"

    def __init__(self, store: Store) -> None:
        self.store = store

    def save(self, form: str, data: dict[str, Any]) -> None:
        self.store.put_local(self.PREFIX + form, data)

    def load(self, form: str) -> dict[str, Any]:
        value = self.store.get_local(self.PREFIX + form, {})
        return value if isinstance(value, dict) else {}

    def clear(self, form: str) -> None:
        self.store.delete_local(self.PREFIX + form)

    def names(self) -> list[str]:
        return [n[len(self.PREFIX):] for n in self.store.local_names(self.PREFIX)]


def save_visit(store: Store, *, grid_id: str, household_id: str, worker_id: str, purpose: str,
               notes: str = "", needs: list[str] | None = None, follow_up: str | None = None,
               location: Any = None, visited_at: str | None = None) -> str:
    """Save a visit; raises :class:`fieldsync.ValidationError` naming the field at fault."""
    record = {
        "grid_id": grid_id, "household_id": household_id, "worker_id": worker_id,
        "visited_at": visited_at or now_iso(), "purpose": purpose, "notes": notes or None,
        "needs": needs or None, "follow_up": follow_up or None, "location": location or None,
    }
    return store.put("visits", {k: v for k, v in record.items() if v is not None})


def save_report(store: Store, *, grid_id: str, reporter_id: str, category: str, description: str,
                location: Any = None, household_id: str | None = None,
                attachments: list[str] | None = None) -> str:
    """Save a new incident report with status ``submitted``."""
    if not category:
        raise fieldsync.ValidationError("reports", "category", "is required")
    record = {
        "id": uuid.uuid4().hex, "grid_id": grid_id, "reporter_id": reporter_id, "category": category,
        "description": description, "location": location or None, "household_id": household_id or None,
        "attachments": attachments or None, "reported_at": now_iso(), "status": "submitted",
    }
    return store.put("reports", {k: v for k, v in record.items() if v is not None})
