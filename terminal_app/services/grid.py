"""The worker's grid: the household list, search, filters and a household's detail.

Search goes through the store's blind indexes (nothing is decrypted to
search): an 18-character ID number finds residents, a phone number finds
households and residents, anything else is taken as a name (the head of
household or any resident).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from fieldsync import Store

__all__ = ["HouseholdRow", "HouseholdDetail", "GridModel", "OVERDUE_DAYS", "search_kind"]

OVERDUE_DAYS = 30


@dataclass(frozen=True)
class HouseholdRow:
    """One line of the household list."""

    id: str
    address: str
    place: str  # building, unit and room when known: what a worker reads on the door
    head_name: str
    phone: str
    tags: tuple[str, ...]
    members: int
    last_visit: str | None  # ISO date
    overdue: bool  # not visited in the last OVERDUE_DAYS days


@dataclass
class HouseholdDetail:
    household: dict[str, Any]
    members: list[dict[str, Any]] = field(default_factory=list)
    visits: list[dict[str, Any]] = field(default_factory=list)  # newest first
    reports: list[dict[str, Any]] = field(default_factory=list)


def search_kind(text: str) -> str:
    """What the worker typed: ``id_number``, ``phone`` or ``name``."""
    compact = re.sub(r"[\s\-+]", "", text)
    if re.fullmatch(r"[0-9]{17}[0-9Xx]", compact):
        return "id_number"
    if re.fullmatch(r"[0-9]{7,15}", compact):
        return "phone"
    return "name"


def _visit_day(visit: dict[str, Any]) -> str | None:
    at = visit.get("visited_at")
    if not isinstance(at, str):
        return None
    try:
        return datetime.fromisoformat(at).date().isoformat()
    except ValueError:
        return None


class GridModel:
    """Reads for the grid screens; ``today`` is injectable for tests."""

    def __init__(self, store: Store, today: date | None = None) -> None:
        self.store = store
        self._today = today
        self._rows: list[HouseholdRow] | None = None  # every household, built once per change

    def invalidate(self) -> None:
        """Records changed (a save, a sync): the next read rebuilds the list."""
        self._rows = None

    @property
    def today(self) -> date:
        return self._today or date.today()

    def _last_visits(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for v in self.store.list("visits"):
            hid, day = v.get("household_id"), _visit_day(v)
            if isinstance(hid, str) and day and day > last.get(hid, ""):
                last[hid] = day
        return last

    def rows(self, tag: str | None = None, only: set[str] | None = None) -> list[HouseholdRow]:
        """The household list (optionally one tag, or only the given ids), sorted by address.

        The whole list is decrypted once and kept until :meth:`invalidate`, so a
        search or a filter only picks rows out of it.
        """
        if self._rows is None:
            self._rows = self._build_rows()
        return [r for r in self._rows
                if (not tag or tag in r.tags) and (only is None or r.id in only)]

    def _build_rows(self) -> list[HouseholdRow]:
        cutoff = (self.today - timedelta(days=OVERDUE_DAYS)).isoformat()
        last = self._last_visits()
        out = []
        for h in self.store.list("households"):
            tags = tuple(h.get("tags") or ())
            seen = last.get(h["id"]) or h.get("last_visit")
            place = "".join(str(h.get(k) or "") for k in ("building", "unit", "room"))
            out.append(HouseholdRow(
                id=h["id"], address=h.get("address", ""), place=place or h.get("address", ""),
                head_name=h.get("head_name", ""),
                phone=h.get("phone", ""), tags=tags, members=int(h.get("members") or 0),
                last_visit=seen, overdue=not seen or seen < cutoff,
            ))
        out.sort(key=lambda r: r.address)
        return out

    def search(self, text: str) -> set[str]:
        """Ids of the households that match ``text`` (through the blind indexes)."""
        text = text.strip()
        if not text:
            return set()
        kind = search_kind(text)
        found: set[str] = set()
        if kind == "id_number":
            found |= {r["household_id"] for r in self.store.find("residents", "id_number", text)}
        elif kind == "phone":
            found |= {h["id"] for h in self.store.find("households", "phone", text)}
            found |= {r["household_id"] for r in self.store.find("residents", "phone", text)}
        else:
            found |= {h["id"] for h in self.store.find("households", "head_name", text)}
            found |= {r["household_id"] for r in self.store.find("residents", "name", text)}
        return found

    def detail(self, household_id: str) -> HouseholdDetail:
        """A household with its members, visits (newest first) and reports."""
        household = self.store.get("households", household_id)
        grid = household.get("grid_id")
        members = [r for r in self.store.list("residents", grid) if r.get("household_id") == household_id]
        visits = [v for v in self.store.list("visits", grid) if v.get("household_id") == household_id]
        visits.sort(key=lambda v: v.get("visited_at", ""), reverse=True)
        reports = [p for p in self.store.list("reports", grid) if p.get("household_id") == household_id]
        reports.sort(key=lambda p: p.get("reported_at", ""), reverse=True)
        return HouseholdDetail(household, members, visits, reports)


# -- household detail: what the household screen shows ----------------------------


def household_place(household: dict[str, Any]) -> str:
    """Building, unit and room (what a worker reads on the door), else the address."""
    place = "".join(str(household.get(k) or "") for k in ("building", "unit", "room"))
    return place or str(household.get("address") or "")


def mask_id_number(id_number: str) -> str:
    """420106********0020: the area code and the last four, never the birth date."""
    value = "".join(str(id_number or "").split())
    if len(value) > 10:
        return value[:6] + "*" * (len(value) - 10) + value[-4:]
    if len(value) > 4:
        return "*" * (len(value) - 2) + value[-2:]
    return "*" * len(value)


def age_on(birth_date: Any, today: date) -> int | None:
    """Whole years from ``birth_date`` (ISO text) to ``today``; None when unknown or not a date."""
    if not isinstance(birth_date, str):
        return None
    try:
        born = date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    if born > today:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def first_line(text: Any) -> str:
    """The first non-empty line of a free-text note ("" for none)."""
    if not isinstance(text, str):
        return ""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def iso_day(value: Any) -> str:
    """The calendar day (YYYY-MM-DD) of an ISO date or date-time, in its own offset; "" if unreadable."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        return datetime.fromisoformat(value).date().isoformat()
    except ValueError:
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            return ""


__all__ += ["household_place", "mask_id_number", "age_on", "first_line", "iso_day"]
