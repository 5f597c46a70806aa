"""Forms a worker fills in (visit, incident report) and their drafts.

A draft is saved, encrypted and on this device only, as the worker types;
it survives the app being killed and a failed sync, and is cleared only
when the record it became has been saved.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
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
               location: Any = None, visited_at: str | None = None,
               attachments: list[str] | None = None) -> str:
    """Save a visit; raises :class:`fieldsync.ValidationError` naming the field at fault.

    ``attachments`` are content hashes of photos already in ``store.attachments``.
    """
    record = {
        "grid_id": grid_id, "household_id": household_id, "worker_id": worker_id,
        "visited_at": visited_at or now_iso(), "purpose": purpose, "notes": notes or None,
        "needs": needs or None, "follow_up": follow_up or None, "location": location or None,
        "attachments": attachments or None,
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


# -- the visit form: what the visit screen edits, drafts and saves ------------------

LOCATION_MAX = 200


def visit_draft_name(household_id: str) -> str:
    """The draft slot of the visit form for one household (one draft per household)."""
    return f"visit:{household_id}"


@dataclass
class VisitForm:
    """The visit form as the worker left it: the draft's content, before any validation."""

    purpose: str = ""
    notes: str = ""
    needs: list[str] = field(default_factory=list)
    follow_up: str = ""
    location: str = ""
    photo: str = ""  # content hash of the photo in store.attachments ("" = none)

    @classmethod
    def from_draft(cls, data: Any) -> "VisitForm":
        """Rebuild a form from a stored draft, dropping anything malformed rather than failing."""
        if not isinstance(data, dict):
            return cls()

        def text(key: str) -> str:
            value = data.get(key)
            return value if isinstance(value, str) else ""

        raw_needs = data.get("needs")
        needs = [n for n in raw_needs if isinstance(n, str) and n] if isinstance(raw_needs, list) else []
        return cls(purpose=text("purpose"), notes=text("notes"), needs=list(dict.fromkeys(needs)),
                   follow_up=text("follow_up"), location=text("location"), photo=text("photo"))

    def to_draft(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "notes": self.notes, "needs": list(self.needs),
                "follow_up": self.follow_up, "location": self.location, "photo": self.photo}

    def is_empty(self) -> bool:
        """Nothing typed or chosen: no draft is worth keeping."""
        return not (self.purpose or self.notes.strip() or self.needs or self.follow_up.strip()
                    or self.location.strip() or self.photo)


def follow_up_after(today: date, days: int) -> str:
    """The follow-up date ``days`` after ``today``, as the form shows it (YYYY-MM-DD)."""
    return (today + timedelta(days=days)).isoformat()


FOLLOW_UP_BAD_DATE = "must be a date like 2024-05-31"
FOLLOW_UP_PAST = "must not be before today"
PHOTO_MISSING = "is no longer on this device"


_DATE_RE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")


def parse_follow_up(text: str, today: date) -> str | None:
    """The follow-up date typed by the worker as ISO text, or None when left empty.

    Accepts 2024-06-01, 2024-6-1, 2024/6/1 and full-width digits (a Chinese
    keyboard).  Raises :class:`fieldsync.ValidationError` on ``follow_up``
    with the problem ``FOLLOW_UP_BAD_DATE`` or ``FOLLOW_UP_PAST``.
    """
    value = unicodedata.normalize("NFKC", text or "").strip()
    if not value:
        return None
    match = _DATE_RE.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise fieldsync.ValidationError("visits", "follow_up", FOLLOW_UP_BAD_DATE) from None
    if day < today:
        raise fieldsync.ValidationError("visits", "follow_up", FOLLOW_UP_PAST)
    return day.isoformat()


def submit_visit(store: Store, form: VisitForm, *, grid_id: str, household_id: str, worker_id: str,
                 today: date, visited_at: str | None = None) -> str:
    """Check the form and save the visit; returns its id.

    Raises :class:`fieldsync.ValidationError` naming the field at fault
    (``purpose``, ``follow_up``, ``location``, ``notes`` ...); nothing is
    saved then.  Needs keep the order of :data:`VISIT_NEEDS`; a need that is
    not one of them (from an older draft) is kept after them.
    """
    if not form.purpose.strip():
        raise fieldsync.ValidationError("visits", "purpose", "is required")
    follow_up = parse_follow_up(form.follow_up, today)
    location = form.location.strip()
    if len(location) > LOCATION_MAX:
        raise fieldsync.ValidationError("visits", "location", f"must be at most {LOCATION_MAX} characters")
    needs = [n for n in VISIT_NEEDS if n in form.needs] + [n for n in form.needs if n not in VISIT_NEEDS]
    if form.photo and not store.attachments.exists(form.photo):
        raise fieldsync.ValidationError("visits", "attachments", PHOTO_MISSING)
    return save_visit(store, grid_id=grid_id, household_id=household_id, worker_id=worker_id,
                      purpose=form.purpose.strip(), notes=form.notes.strip(), needs=needs,
                      follow_up=follow_up, location=location or None, visited_at=visited_at,
                      attachments=[form.photo] if form.photo else None)


_TOO_LONG_RE = re.compile(r"must be at most (\d+) characters")


def problem_message(problem: str) -> tuple[str, dict[str, Any]]:
    """The catalog key (and its values) that says a validation ``problem`` in the worker's words.

    Problems without a translation map to ``visit.problem.other`` with the
    library's own text as ``problem``.
    """
    if problem == "is required":
        return "common.required", {}
    if problem == FOLLOW_UP_BAD_DATE:
        return "visit.problem.bad_date", {}
    if problem == FOLLOW_UP_PAST:
        return "visit.problem.past", {}
    if problem == PHOTO_MISSING:
        return "visit.problem.photo_missing", {}
    too_long = _TOO_LONG_RE.fullmatch(problem)
    if too_long:
        return "visit.problem.too_long", {"n": int(too_long[1])}
    if problem.startswith("must be one of"):
        return "visit.problem.choice", {}
    return "visit.problem.other", {"problem": problem}


__all__ += ["VisitForm", "visit_draft_name", "follow_up_after", "parse_follow_up", "submit_visit",
            "problem_message", "FOLLOW_UP_BAD_DATE", "FOLLOW_UP_PAST", "PHOTO_MISSING", "LOCATION_MAX"]
