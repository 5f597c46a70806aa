"""Conflicts and rejections for the worker to review and fix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fieldsync import FieldsyncError, RecordNotFound, Stamp, Store, UnknownKindError, ValidationError
from fieldsync.workflow import allowed_next

__all__ = ["ReviewItem", "review_items", "keep_conflict", "restore_conflict", "resubmit_rejection",
           "dismiss_rejection", "FIXABLE_CODES", "problem_key", "can_resubmit", "field_type", "field_choices",
           "parse_input", "value_text", "record_label", "label_of", "grid_names", "stamp_origin", "open_counts"]


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


# -- helpers for the review screen (no Kivy: plain pytest covers them) ---------------------------------

FIXABLE_CODES = ("validation_failed", "out_of_scope", "transition_not_allowed", "field_not_allowed")

# ValidationError problems (fieldsync.schema wording) -> catalog key suffix and the values it needs.
_PROBLEMS: tuple[tuple[str, str], ...] = (
    (r"is required", "required"),
    (r"must be text", "text"),
    (r"must be at most (?P<n>\d+) characters", "too_long"),
    (r"must be a whole number", "integer"),
    (r"must be a number", "number"),
    (r"must be true or false", "boolean"),
    (r"must be a date like .*", "date"),
    (r"must be a date and time like .*", "datetime"),
    (r"must be a list of non-empty text tags", "tags"),
    (r"must be one of (?P<choices>.*)", "choices"),
    (r"is not a valid 18-character ID number.*", "id_number"),
    (r"must be a phone number.*", "phone"),
    (r"must be a grid id", "grid_id"),
    (r"must be 1-64 characters.*", "record_id"),
    (r"must be text or \{lat, lon\}|needs numeric lat and lon|lat/lon out of range", "location"),
)


def problem_key(problem: str) -> tuple[str, dict[str, str]]:
    """The catalog key (``review.problem.<name>``) and values for a validation problem text.

    ``("review.problem.other", {"problem": problem})`` when the wording is not known.
    """
    text = problem.strip()
    if ": " in text and "." in text.split(": ", 1)[0]:  # "kind.field: problem" from the server
        text = text.split(": ", 1)[1]
    for pattern, name in _PROBLEMS:
        m = re.fullmatch(pattern, text)
        if m:
            return f"review.problem.{name}", {k: v for k, v in m.groupdict().items() if v is not None}
    return "review.problem.other", {"problem": text}


def can_resubmit(item: ReviewItem) -> bool:
    """Whether correcting one field can make a rejected change acceptable (else only dismissing helps)."""
    return (item.kind == "rejection" and item.code in FIXABLE_CODES and bool(item.field)
            and item.field not in ("*", "id"))


def field_type(store: Store, collection: str, field: str) -> str:
    """The declared type of ``collection.field`` (``text`` for undeclared fields and unknown kinds)."""
    try:
        spec = store.registry.get(collection).fields.get(field)
    except UnknownKindError:
        return "text"
    return spec.type if spec is not None else "text"


def field_choices(store: Store, item: ReviewItem) -> list[str] | None:
    """The values a worker may pick for the faulty field of a rejection, or None for free text.

    The grid field offers this device's grids; a report's status offers the
    transitions a worker may make from the status the server holds (a new
    report: only ``submitted``); other fields offer their declared choices.
    """
    if not item.field:
        return None
    try:
        kind = store.registry.get(item.collection)
    except UnknownKindError:
        return None
    if item.field == kind.grid_field:
        return store.grids()
    if item.collection == "reports" and item.field == "status":
        try:
            current = store.get("reports", item.record_id).get("status")
        except RecordNotFound:
            current = None
        return allowed_next("worker", current)
    spec = kind.fields.get(item.field)
    return list(spec.choices) if spec is not None and spec.choices else None


def parse_input(store: Store, collection: str, field: str, text: str) -> Any:
    """Turn what the worker typed into a value of the field's type; empty text is ``None`` (leave out).

    Raises :class:`fieldsync.ValidationError` naming the field when the text
    cannot be that type (a number, a list of tags, a location).
    """
    text = text.strip()
    if not text:
        return None
    kind = field_type(store, collection, field)
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValidationError(collection, field, "must be a whole number") from None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValidationError(collection, field, "must be a number") from None
    if kind == "boolean":
        return text.lower() in ("是", "true", "yes", "y", "1")
    if kind == "tags":
        return [t for t in re.split(r"[,，、;；\s]+", text) if t]
    if kind == "location":
        m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*[,，]\s*(-?\d+(?:\.\d+)?)", text)
        return {"lat": float(m.group(1)), "lon": float(m.group(2))} if m else text
    if kind in ("list", "object", "any"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def value_text(value: Any) -> str:
    """A stored value as the worker would type it back (the editor's starting text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "、".join(value)
    if isinstance(value, dict) and set(value) >= {"lat", "lon"}:
        return f"{value['lat']}, {value['lon']}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def record_label(collection: str, values: dict[str, Any]) -> str:
    """A short name a worker recognises for a record (a door, a person, a report), from its values."""
    if collection == "households":
        place = "".join(str(values.get(k) or "") for k in ("building", "unit", "room"))
        return place or str(values.get("address") or "")
    if collection == "residents":
        return str(values.get("name") or "")
    if collection == "reports":
        text = str(values.get("description") or "")
        text = text if len(text) <= 16 else text[:15] + "…"
        return " · ".join(p for p in (str(values.get("category") or ""), text) if p)
    if collection == "visits":
        day = str(values.get("visited_at") or "")[:10]
        return " · ".join(p for p in (str(values.get("purpose") or ""), day) if p)
    if collection == "tasks":
        return str(values.get("title") or values.get("kind") or "")
    if collection == "grids":
        return str(values.get("name") or "")
    return ""


def label_of(store: Store, item: ReviewItem) -> str:
    """:func:`record_label` of the record an item is about: from the store, else from what was sent."""
    try:
        values = store.get(item.collection, item.record_id)
    except FieldsyncError:
        values = {}
    label = record_label(item.collection, values)
    if not label and item.kind == "rejection":
        label = record_label(item.collection, item.values)
    return label


def grid_names(store: Store) -> dict[str, str]:
    """Grid id -> grid name, for the grids this device holds."""
    return {g["id"]: str(g.get("name") or g["id"]) for g in store.list("grids")}


def stamp_origin(store: Store, stamp: Any) -> tuple[bool | None, int | None]:
    """(written on this device?, wall-clock ms) of a conflict value's clock stamp; (None, None) if unreadable."""
    try:
        s = Stamp.decode(stamp)
    except ValueError:
        return None, None
    return s.node == store.node_id, s.wall_ms


def open_counts(store: Store) -> tuple[int, int]:
    """(rejections not dismissed, open conflicts): the numbers the sync bar shows."""
    conflicts = sum(1 for c in store.list("conflicts") if c.get("status", "open") == "open")
    return len(store.rejections()), conflicts
