"""Typed record kinds and the registry that holds them.

A :class:`Kind` names a collection and declares its fields; :meth:`Kind.validate`
checks a whole record on write and raises :class:`ValidationError` naming the
field and the problem.  Fields a kind does not declare (for example ones a
newer server added) are kept as they are.

The grid-work kinds (grids, households, residents, visits, reports, tasks)
form :data:`DEFAULT_KINDS`; an embedding app builds its own :class:`Registry`
(usually ``default_registry()`` plus its kinds) and hands the same registry to
its store and its server.  No I/O happens here.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable, Iterable, Mapping

from .errors import UnknownKindError, ValidationError

__all__ = [
    "SCHEMA_VERSION",
    "Field",
    "Kind",
    "Registry",
    "DEFAULT_KINDS",
    "SYSTEM_KINDS",
    "default_registry",
    "normalise",
    "valid_id_number",
    "REPORT_STATUSES",
]

SCHEMA_VERSION = 1

_TYPES = ("text", "integer", "number", "boolean", "date", "datetime", "tags", "list", "object", "location", "any")
_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")


def _norm_text(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _norm_name(value: str) -> str:
    return re.sub(r"[\s·•.]", "", unicodedata.normalize("NFKC", value).casefold())


def _norm_phone(value: str) -> str:
    digits = re.sub(r"[^0-9]", "", unicodedata.normalize("NFKC", value))
    if digits.startswith("0086") and len(digits) == 15:
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits


def _norm_id_number(value: str) -> str:
    return re.sub(r"\s", "", unicodedata.normalize("NFKC", value)).upper()


_NORMALISERS: dict[str, Callable[[str], str]] = {
    "text": _norm_text,
    "name": _norm_name,
    "phone": _norm_phone,
    "id_number": _norm_id_number,
}


def normalise(how: str, value: str) -> str:
    """The search form of ``value`` (``text``, ``name``, ``phone`` or ``id_number``)."""
    return _NORMALISERS[how](value)


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_id_number(value: str) -> bool:
    """True for an 18-character resident ID number with a correct check digit (GB 11643)."""
    v = _norm_id_number(value)
    if not re.fullmatch(r"[0-9]{17}[0-9X]", v):
        return False
    total = sum(int(d) * w for d, w in zip(v[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == v[17]


@dataclass(frozen=True)
class Field:
    """One declared field.

    ``search`` names a normaliser (``text``, ``name``, ``phone``, ``id_number``): the
    store keeps a blind index of the normalised value so the field can be
    found without decrypting every record.
    """

    type: str = "text"
    required: bool = False
    search: str | None = None
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem or None
    description: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"unknown field type {self.type!r}; expected one of {_TYPES}")
        if self.search is not None and self.search not in _NORMALISERS:
            raise ValueError(f"unknown search normaliser {self.search!r}")


def _type_problem(f: Field, value: Any) -> str | None:
    t = f.type
    if t == "text":
        if not isinstance(value, str):
            return "must be text"
        if f.max_length is not None and len(value) > f.max_length:
            return f"must be at most {f.max_length} characters"
    elif t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
    elif t == "boolean":
        if not isinstance(value, bool):
            return "must be true or false"
    elif t == "date":
        try:
            date.fromisoformat(value)
        except (TypeError, ValueError):
            return "must be a date like 2024-05-31"
    elif t == "datetime":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return "must be a date and time like 2024-05-31T09:30:00+08:00"
    elif t == "tags":
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            return "must be a list of non-empty text tags"
    elif t == "list":
        if not isinstance(value, list):
            return "must be a list"
    elif t == "object":
        if not isinstance(value, dict):
            return "must be an object"
    elif t == "location":
        if isinstance(value, str):
            return None if value.strip() else "must not be empty"
        if not isinstance(value, dict):
            return "must be text or {lat, lon}"
        lat, lon = value.get("lat"), value.get("lon")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lat, lon)):
            return "needs numeric lat and lon"
        assert lat is not None and lon is not None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return "lat/lon out of range"
    if f.choices is not None:
        items = value if t == "tags" else [value]
        if any(x not in f.choices for x in items):
            # The refused value is not repeated: it may be personal data.
            return f"must be one of {', '.join(f.choices)}"
    if f.check is not None:
        return f.check(value)
    return None


@dataclass(frozen=True)
class Kind:
    """A record kind: the collection name and its declared fields.

    ``grid_field`` names the field holding the grid a record belongs to (the
    sync partition and the scope rule).  ``version`` is the kind's schema
    version; it only ever grows, by adding optional fields.
    """

    name: str
    fields: Mapping[str, Field]
    grid_field: str = "grid_id"
    version: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.name):
            raise ValueError(f"kind name must be lower-case letters, digits and _: {self.name!r}")
        for fname in self.fields:
            if fname.startswith("_") or fname == "id":
                raise ValueError(f"field name {fname!r} is reserved")

    def validate(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Check a whole record; return it (unknown fields kept) or raise ValidationError."""
        if not isinstance(record, Mapping):
            raise ValidationError(self.name, "*", "a record must be an object")
        out = dict(record)
        rid = out.get("id")
        if rid is not None and (not isinstance(rid, str) or not _ID_RE.match(rid)):
            raise ValidationError(self.name, "id", "must be 1-64 characters of letters, digits, _ . : -")
        for fname, f in self.fields.items():
            value = out.get(fname)
            if value is None or value == "" or value == []:
                if f.required:
                    raise ValidationError(self.name, fname, "is required")
                continue
            problem = _type_problem(f, value)
            if problem:
                raise ValidationError(self.name, fname, problem)
        grid = out.get(self.grid_field) if self.grid_field != "id" else rid
        if grid is not None and (not isinstance(grid, str) or not _ID_RE.match(grid)):
            raise ValidationError(self.name, self.grid_field, "must be a grid id")
        return out

    def grid_of(self, record: Mapping[str, Any]) -> str:
        """The grid a (validated) record belongs to."""
        value = record.get("id" if self.grid_field == "id" else self.grid_field)
        if not isinstance(value, str) or not value:
            raise ValidationError(self.name, self.grid_field, "is required")
        return value

    def search_fields(self) -> dict[str, str]:
        """Field name -> normaliser, for the fields that have a blind index."""
        return {n: f.search for n, f in self.fields.items() if f.search}


class Registry:
    """The record kinds one store (and its server) know about.

    Every registry also holds the system kinds (:data:`SYSTEM_KINDS`, such as
    the conflict log) that sync itself relies on.
    """

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: dict[str, Kind] = {}
        for k in (*SYSTEM_KINDS, *kinds):
            self.register(k)

    def register(self, kind: Kind) -> Kind:
        """Add a kind; registering a different kind under a taken name is an error."""
        existing = self._kinds.get(kind.name)
        if existing is not None and existing != kind:
            raise ValueError(f"a different kind is already registered as {kind.name!r}")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(f"no record kind {name!r}; known: {', '.join(sorted(self._kinds))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._kinds.values())

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def copy(self) -> "Registry":
        return Registry(self._kinds.values())


def _id_number_check(value: Any) -> str | None:
    return None if valid_id_number(value) else "is not a valid 18-character ID number (check digit)"


def _phone_check(value: Any) -> str | None:
    digits = _norm_phone(value)
    return None if 7 <= len(digits) <= 15 else "must be a phone number of 7-15 digits"


HOUSEHOLD_TAGS = ("低保", "独居老人", "残疾", "失业", "空巢", "优抚", "流动人口", "特困")
REPORT_STATUSES = ("submitted", "dispatched", "in_progress", "resolved", "confirmed", "reopened", "rejected")
TASK_STATUSES = ("open", "done", "cancelled")

_T = Field  # keeps the tables below readable

CONFLICT_STATUSES = ("open", "kept", "restored")

# Written by the server when a concurrent overwrite happens; devices sync them
# like any record so the worker (or the command centre) can review both values.
SYSTEM_KINDS: tuple[Kind, ...] = (
    Kind("conflicts", {
        "grid_id": _T(required=True),
        "collection": _T(required=True),
        "record_id": _T(required=True),
        "field": _T(required=True),
        "kept_value": _T("any"),
        "kept_stamp": _T(),
        "lost_value": _T("any"),
        "lost_stamp": _T(),
        "status": _T(choices=CONFLICT_STATUSES),
    }, description="A concurrent overwrite: both values kept for review (system kind)."),
)
DEFAULT_KINDS: tuple[Kind, ...] = (
    Kind("grids", {
        "name": _T(required=True, max_length=100),
        "community": _T(max_length=100),
        "street": _T(max_length=100),
        "workers": _T("tags"),
    }, grid_field="id", description="A grid of about 300 households (reference data)."),
    Kind("households", {
        "grid_id": _T(required=True),
        "address": _T(required=True, max_length=200),
        "building": _T(max_length=20),
        "unit": _T(max_length=20),
        "room": _T(max_length=20),
        "head_name": _T(search="name", max_length=50),
        "phone": _T(search="phone", check=_phone_check),
        "members": _T("integer"),
        "tags": _T("tags"),
        "notes": _T(max_length=2000),
        "last_visit": _T("date"),
    }, description="A household in the grid."),
    Kind("residents", {
        "grid_id": _T(required=True),
        "household_id": _T(required=True),
        "name": _T(required=True, search="name", max_length=50),
        "id_number": _T(search="id_number", check=_id_number_check),
        "birth_date": _T("date"),
        "gender": _T(choices=("男", "女")),
        "relation": _T(max_length=20),
        "phone": _T(search="phone", check=_phone_check),
        "tags": _T("tags"),
    }, description="A person living in a household."),
    Kind("visits", {
        "grid_id": _T(required=True),
        "household_id": _T(required=True),
        "worker_id": _T(required=True),
        "visited_at": _T("datetime", required=True),
        "purpose": _T(required=True, max_length=50),
        "notes": _T(max_length=4000),
        "needs": _T("tags"),
        "follow_up": _T("date"),
        "location": _T("location"),
        "attachments": _T("tags"),
    }, description="A door-to-door visit."),
    Kind("reports", {
        "grid_id": _T(required=True),
        "category": _T(required=True, max_length=50),
        "description": _T(required=True, max_length=4000),
        "location": _T("location"),
        "attachments": _T("tags"),
        "household_id": _T(),
        "reporter_id": _T(),
        "reported_at": _T("datetime"),
        "status": _T(choices=REPORT_STATUSES),
        "department": _T(max_length=50),
        "due_at": _T("datetime"),
        "timeline": _T("list"),
    }, description="An incident found on patrol, dispatched by the command centre."),
    Kind("tasks", {
        "grid_id": _T(required=True),
        "assignee": _T(required=True),
        "kind": _T(required=True, max_length=50),
        "title": _T(max_length=200),
        "related": _T("object"),
        "due": _T("date"),
        "status": _T(choices=TASK_STATUSES),
        "notes": _T(max_length=2000),
    }, description="Work assigned to a grid worker."),
)


def default_registry() -> Registry:
    """A new registry holding the grid-work kinds."""
    return Registry(DEFAULT_KINDS)
