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
        """The household list (optionally one tag, or only the given ids), sorted by address."""
        cutoff = (self.today - timedelta(days=OVERDUE_DAYS)).isoformat()
        last = self._last_visits()
        out = []
        for h in self.store.list("households"):
            tags = tuple(h.get("tags") or ())
            if tag and tag not in tags:
                continue
            if only is not None and h["id"] not in only:
                continue
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
