"""One household: who lives there, the visits made, the reports about it; start a visit or a report."""

from __future__ import annotations

from typing import Any

from kivy.clock import Clock
from kivy.factory import Factory
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

import fieldsync

from ..i18n import keys
from ..services.forms import visit_draft_name
from ..services.grid import age_on, first_line, household_place, iso_day, mask_id_number
from .base import FieldScreen
from .overview import mask_phone

__all__ = ["HouseholdScreen", "HouseholdMemberRow", "HouseholdVisitRow", "HouseholdReportRow"]

NOTICE_SECONDS = 4


class HouseholdRowPanel(BoxLayout):
    """A dark panel holding one member, visit or report (its look is in the .kv)."""


class HouseholdMemberRow(HouseholdRowPanel):
    name = StringProperty("")
    detail = StringProperty("")  # relation · gender · age
    id_text = StringProperty("")  # the masked ID number
    tags = StringProperty("")


class HouseholdVisitRow(HouseholdRowPanel):
    day = StringProperty("")
    purpose = StringProperty("")
    notes = StringProperty("")
    extra = StringProperty("")  # needs and follow-up


class HouseholdReportRow(HouseholdRowPanel):
    category = StringProperty("")
    status = StringProperty("")  # the status code (picks the colour)
    status_text = StringProperty("")
    day = StringProperty("")
    description = StringProperty("")


class HouseholdScreen(FieldScreen):
    household_id = StringProperty("")
    found = BooleanProperty(False)
    place = StringProperty("")
    address = StringProperty("")
    head = StringProperty("")
    phone_text = StringProperty("")
    has_phone = BooleanProperty(False)
    phone_shown = BooleanProperty(False)
    has_draft = BooleanProperty(False)
    n_members = NumericProperty(0)
    n_visits = NumericProperty(0)
    n_reports = NumericProperty(0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._phone = ""  # the full number, only ever on screen after "show"
        self._notice_event: Any = None
        self._notice = ""  # catalog key of the message on screen, so it follows a language switch
        self._known: set[str] = set()

    # -- showing --------------------------------------------------------------
    def prepare(self, household_id: str | None = None, notice: str = "", **params: Any) -> None:
        """Show ``household_id``; ``notice`` is a catalog key shown for a few seconds (e.g. "common.saved")."""
        if household_id and household_id != self.household_id:
            self.household_id = household_id
            self.phone_shown = False
            self.ids.scroll.scroll_y = 1
        self._notice = notice
        self.message = self.t(notice) if notice else ""
        if self._notice_event is not None:
            self._notice_event.cancel()
            self._notice_event = None
        if notice:
            self._notice_event = Clock.schedule_once(self._clear_notice, NOTICE_SECONDS)

    def _clear_notice(self, dt: float) -> None:
        self._notice_event = None
        self._notice = ""
        self.message = ""

    def on_leave(self, *args: Any) -> None:
        self.phone_shown = False
        self._show_phone()
        if self.app.grid is None:  # locked: no personal data stays in the widgets
            self._clear("")

    def refresh(self) -> None:
        grid = self.app.grid
        if grid is None or not self.household_id:
            return
        try:
            detail = grid.detail(self.household_id)
        except fieldsync.RecordNotFound:
            self._clear(self.t("household.not_found"))
            return
        self._known = set(keys())
        if self._notice:
            self.message = self.t(self._notice)
        h = detail.household
        self.found = True
        self.place = household_place(h)
        self.address = str(h.get("address") or "")
        self.head = str(h.get("head_name") or "")
        self._phone = str(h.get("phone") or "")
        self.has_phone = bool(self._phone)
        self._show_phone()
        self._fill_tags(h.get("tags") or [])
        drafts = self.app.drafts
        self.has_draft = bool(drafts and drafts.load(visit_draft_name(self.household_id)))
        self._fill_members(detail.members, grid.today)
        self._fill_visits(detail.visits)
        self._fill_reports(detail.reports)

    def _clear(self, why: str) -> None:
        self.found = False
        self.place = self.address = self.head = self._phone = ""
        self.has_phone = False
        self._show_phone()
        self._notice = ""
        self.message = why
        for box in ("tags_box", "members_box", "visits_box", "reports_box"):
            self.ids[box].clear_widgets()
        self.n_members = self.n_visits = self.n_reports = 0

    # -- text -------------------------------------------------------------------
    def _maybe(self, value: str, *prefixes: str) -> str:
        """The catalog text of ``value`` under the first prefix that has it, else ``value`` as stored."""
        for prefix in prefixes:
            if prefix + value in self._known:
                return self.t(prefix + value)
        return value

    def _tag(self, tag: str) -> str:
        return self._maybe(tag, "tag.", "household.tag.")

    def _show_phone(self) -> None:
        if not self._phone:
            self.phone_text = self.t("household.no_phone")
        else:
            self.phone_text = self._phone if self.phone_shown else mask_phone(self._phone)

    def toggle_phone(self) -> None:
        self.phone_shown = not self.phone_shown
        self._show_phone()

    # -- lists --------------------------------------------------------------------
    def _fill_tags(self, tags: list[str]) -> None:
        box = self.ids.tags_box
        box.clear_widgets()
        for tag in tags:
            box.add_widget(Factory.HouseholdTag(text=self._tag(tag)))
        if not tags:
            box.add_widget(Factory.HouseholdNoTag(text=self.t("household.no_tags")))

    def _fill_members(self, members: list[dict[str, Any]], today: Any) -> None:
        box = self.ids.members_box
        box.clear_widgets()
        # The head of household first, then the others oldest first.
        members = sorted(members, key=lambda m: (m.get("relation") != "户主", str(m.get("birth_date") or "9999")))
        for m in members:
            parts = []
            if m.get("relation"):
                parts.append(self._maybe(str(m["relation"]), "household.relation."))
            if m.get("gender"):
                parts.append(self._maybe(str(m["gender"]), "household.gender."))
            age = age_on(m.get("birth_date"), today)
            if age is not None:
                parts.append(self.t("household.age", n=age))
            id_number = str(m.get("id_number") or "")
            box.add_widget(HouseholdMemberRow(
                name=str(m.get("name") or ""), detail=" · ".join(parts),
                id_text=self.t("household.id_number", value=mask_id_number(id_number)) if id_number else "",
                tags=" · ".join(self._tag(t) for t in m.get("tags") or [])))
        self.n_members = len(members)
        if not members:
            box.add_widget(Factory.HouseholdEmpty(text=self.t("household.no_members")))

    def _fill_visits(self, visits: list[dict[str, Any]]) -> None:
        box = self.ids.visits_box
        box.clear_widgets()
        for v in visits:  # newest first (GridModel.detail)
            extra = []
            needs = [self._maybe(n, "visit.need.") for n in v.get("needs") or []]
            if needs:
                extra.append(self.t("household.needs", items=self.t("household.list_sep").join(needs)))
            if v.get("follow_up"):
                extra.append(self.t("household.follow_up", day=iso_day(v["follow_up"])))
            box.add_widget(HouseholdVisitRow(
                day=iso_day(v.get("visited_at")), purpose=self._maybe(str(v.get("purpose") or ""), "visit.purpose."),
                notes=first_line(v.get("notes")) or self.t("household.no_notes"), extra="   ".join(extra)))
        self.n_visits = len(visits)
        if not visits:
            box.add_widget(Factory.HouseholdEmpty(text=self.t("household.no_visits")))

    def _fill_reports(self, reports: list[dict[str, Any]]) -> None:
        box = self.ids.reports_box
        box.clear_widgets()
        for p in reports:  # newest first (GridModel.detail)
            status = str(p.get("status") or "submitted")
            box.add_widget(HouseholdReportRow(
                category=self._maybe(str(p.get("category") or ""), "cat."),
                status=status, status_text=self._maybe(status, "status."),
                day=iso_day(p.get("reported_at")), description=first_line(p.get("description"))))
        self.n_reports = len(reports)
        if not reports:
            box.add_widget(Factory.HouseholdEmpty(text=self.t("household.no_reports")))

    # -- actions ------------------------------------------------------------------
    def new_visit(self) -> None:
        if self.found:
            self.app.go("visit", household_id=self.household_id)

    def report(self) -> None:
        if self.found:
            self.app.go("report", household_id=self.household_id)

    def back(self) -> None:
        self.app.go("overview")
