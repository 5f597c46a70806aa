"""Grid overview: the household list, search through the blind index, tag filters, overdue marks."""

from __future__ import annotations

from typing import Any

from kivy.properties import BooleanProperty, ListProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout

from ..services.grid import OVERDUE_DAYS, HouseholdRow
from .base import FieldScreen

__all__ = ["OverviewScreen", "HouseholdRowView"]

FILTER_TAGS = ("低保", "独居老人", "残疾", "失业")


def mask_phone(phone: str) -> str:
    """138****8000: enough to recognise, not enough to read over a shoulder."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    return f"{digits[:3]}****{digits[-4:]}" if len(digits) >= 8 else digits


class HouseholdRowView(ButtonBehavior, BoxLayout):
    household_id = StringProperty("")
    address = StringProperty("")
    line2 = StringProperty("")
    mark = StringProperty("")
    overdue = BooleanProperty(False)

    def on_release(self) -> None:
        from kivy.app import App

        App.get_running_app().go("household", household_id=self.household_id)


class OverviewScreen(FieldScreen):
    title = StringProperty("")
    rows = ListProperty([])
    tag = StringProperty("")  # "" = all; "overdue" = not visited in 30 days
    query = StringProperty("")

    def prepare(self, reset: bool = False, **params: Any) -> None:
        if reset:  # after unlocking: nothing of an earlier search stays on screen
            self.query = ""
            self.tag = ""
            self.ids.search_input.text = ""

    def forget(self) -> None:
        self.rows = []
        self.query = ""
        self.ids.search_input.text = ""

    def refresh(self) -> None:
        grid = self.app.grid
        if grid is None:
            return
        matches = grid.search(self.query) if self.query.strip() else None
        tag = self.tag if self.tag in FILTER_TAGS else None
        rows = grid.rows(tag=tag, only=matches)
        if self.tag == "overdue":
            rows = [r for r in rows if r.overdue]
        total = self.app.session.require_store().count("households")
        self.title = self.t("overview.title", n=total)
        if matches is not None:
            self.message = self.t("overview.found", n=len(rows)) if rows else self.t("overview.not_found")
        else:
            self.message = ""
        self.rows = [self._view(r) for r in rows]

    def _view(self, row: HouseholdRow) -> dict[str, Any]:
        tags = " ".join(self.t(f"tag.{t}") if t in FILTER_TAGS else t for t in row.tags)
        parts = [row.head_name, mask_phone(row.phone), self.t("overview.members", n=row.members)]
        if tags:
            parts.append(tags)
        if row.last_visit is None:
            mark = self.t("overview.never_visited")
        elif row.overdue:
            mark = self.t("overview.overdue_mark", days=OVERDUE_DAYS)
        else:
            mark = self.t("overview.last_visit", day=row.last_visit[5:])
        return {"household_id": row.id, "address": row.place, "line2": "  ".join(p for p in parts if p),
                "mark": mark, "overdue": row.overdue}

    def search(self, text: str) -> None:
        self.query = text
        self.refresh()

    def clear_search(self) -> None:
        self.ids.search_input.text = ""
        self.search("")

    def set_tag(self, tag: str) -> None:
        self.tag = tag
        self.refresh()
