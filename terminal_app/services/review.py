"""Conflicts and rejections for the worker to review and fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldsync import Store

__all__ = ["ReviewItem", "review_items", "keep_conflict", "restore_conflict", "resubmit_rejection",
           "dismiss_rejection"]


@dataclass(frozen=True)
class ReviewItem:
    kind: str  # "conflict" | "rejection"
    key: str  # conflict record id or rejection seq
    collection: str
    record_id: str
    field: str | None
    code: str  # rejection code, or "conflict"
    message: str
    values: dict[str, Any]  # conflict: kept/lost values; rejection: the values that were sent


def review_items(store: Store) -> list[ReviewItem]:
    items = []
    for rej in store.rejections():
        items.append(ReviewItem("rejection", str(rej.seq), rej.collection, rej.id, rej.field, rej.code,
                                rej.message, rej.values))
    for c in store.list("conflicts"):
        if c.get("status", "open") != "open":
            continue
        items.append(ReviewItem("conflict", c["id"], c.get("collection", ""), c.get("record_id", ""),
                                c.get("field"), "conflict", "",
                                {"kept": c.get("kept_value"), "lost": c.get("lost_value")}))
    return items


def keep_conflict(store: Store, conflict_id: str) -> None:
    """The kept value is right: mark the conflict reviewed."""
    store.put("conflicts", {"id": conflict_id, "status": "kept"})


def restore_conflict(store: Store, conflict_id: str) -> None:
    """The overwritten value was right: write it back, and mark the conflict reviewed."""
    c = store.get("conflicts", conflict_id)
    with store.atomic():
        store.put(c["collection"], {"id": c["record_id"], c["field"]: c.get("lost_value")})
        store.put("conflicts", {"id": conflict_id, "status": "restored"})


def resubmit_rejection(store: Store, seq: int, fixed: dict[str, Any]) -> str:
    """Save the worker's corrected values for a rejected change and mark the rejection dealt with.

    Raises :class:`fieldsync.ValidationError` if the correction is still invalid.
    """
    rej = next(r for r in store.rejections() if r.seq == seq)
    with store.atomic():
        rid = store.put(rej.collection, {**rej.values, **fixed, "id": rej.id})
        store.dismiss_rejection(seq)
    return rid


def dismiss_rejection(store: Store, seq: int) -> None:
    store.dismiss_rejection(seq)
