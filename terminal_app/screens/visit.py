"""Recording a visit to one household; the form is kept as an encrypted draft while the worker types.

The draft (``Drafts`` slot ``visit:<household id>``) is written at most
``DRAFT_DELAY_S`` after a change and at once when the screen is left, so a
killed app or a dead battery loses at most that last half second.  It is
cleared only once the visit itself has been saved, or when the worker
discards it (two taps: one slip of a finger must not lose a long note).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kivy.clock import Clock
from kivy.factory import Factory
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty
from kivy.utils import platform

import fieldsync

from ..i18n import keys
from ..services import capture
from ..services.forms import (
    VISIT_NEEDS,
    VISIT_PURPOSES,
    VisitForm,
    follow_up_after,
    problem_message,
    submit_visit,
    visit_draft_name,
)
from ..services.grid import household_place
from .base import FieldScreen
from .photo_field import PhotoField

__all__ = ["VisitScreen", "DRAFT_DELAY_S"]

log = logging.getLogger("terminal_app.visit")

DRAFT_DELAY_S = 0.5
DISARM_S = 3.0


class VisitScreen(PhotoField, FieldScreen):
    locked_message = "visit.photo.locked"
    show_nav = False  # a form: leave it by Save or Cancel, not by a stray tap on the bar
    household_id = StringProperty("")
    place = StringProperty("")
    found = BooleanProperty(False)
    discard_armed = BooleanProperty(False)
    photo_hash = StringProperty("")  # content hash of the photo in the store ("" = none)
    thumb_texture = ObjectProperty(None, allownone=True)

    def __init__(self, **kwargs: Any) -> None:
        self._loading = False  # True while the form is filled from a draft: not a change
        self._grid_id = ""
        self._draft_trigger = Clock.create_trigger(self._save_draft, DRAFT_DELAY_S)
        self._disarm_trigger = Clock.create_trigger(self._disarm, DISARM_S)
        super().__init__(**kwargs)

    def on_kv_post(self, base_widget: Any) -> None:
        for purpose in VISIT_PURPOSES:
            chip = Factory.VisitPurposeChip()
            chip.value = purpose
            chip.bind(state=self.changed)
            self.ids.purposes.add_widget(chip)
        for need in VISIT_NEEDS:
            chip = Factory.VisitNeedChip()
            chip.value = need
            chip.bind(state=self.changed)
            self.ids.needs.add_widget(chip)

    # -- opening ---------------------------------------------------------------------
    def prepare(self, household_id: str | None = None, **params: Any) -> None:
        if household_id:
            self.household_id = household_id
        self.message = ""
        self._disarm()
        self._load_household()
        drafts = self.app.drafts
        form = VisitForm.from_draft(drafts.load(visit_draft_name(self.household_id))) if drafts else VisitForm()
        self._set_form(form)
        if not form.is_empty():
            self.message = self.t("visit.draft_restored")
        self.ids.scroll.scroll_y = 1

    def _load_household(self) -> None:
        grid = self.app.grid
        self.found = False
        self.place = ""
        self._grid_id = ""
        if grid is None or not self.household_id:
            return
        try:
            household = grid.store.get("households", self.household_id)
        except fieldsync.RecordNotFound:
            self.message = self.t("visit.no_household")
            return
        self.place = household_place(household)
        self._grid_id = str(household.get("grid_id") or "")
        self.found = True

    def refresh(self) -> None:
        # After a sync the household may have moved grid or left the worker's scope.
        if self.household_id:
            keep = self.message
            self._load_household()
            if self.found:
                self.message = keep

    def on_pre_leave(self, *args: Any) -> None:
        self._flush_draft()
        self._disarm()

    def on_leave(self, *args: Any) -> None:
        if self.app.drafts is None:  # locked: no personal data stays in the widgets (the draft keeps it)
            self._set_form(VisitForm())

    # -- the form ------------------------------------------------------------------
    def _chips(self, box: str) -> list[Any]:
        return list(reversed(self.ids[box].children))  # children are stored last-added first

    def form(self) -> VisitForm:
        """What the worker has entered so far."""
        chosen = [c.value for c in self._chips("purposes") if c.state == "down"]
        return VisitForm(
            purpose=chosen[0] if chosen else "",
            notes=self.ids.notes.text,
            needs=[c.value for c in self._chips("needs") if c.state == "down"],
            follow_up=self.ids.follow_up.text,
            location=self.ids.location.text,
            photo=self.photo_hash,
        )

    def _set_form(self, form: VisitForm) -> None:
        self._loading = True
        try:
            for chip in self._chips("purposes"):
                chip.state = "down" if chip.value == form.purpose else "normal"
            for chip in self._chips("needs"):
                chip.state = "down" if chip.value in form.needs else "normal"
            self.ids.notes.text = form.notes
            self.ids.follow_up.text = form.follow_up
            self.ids.location.text = form.location
            self._set_photo(form.photo)
        finally:
            self._loading = False
        self._draft_trigger.cancel()  # what is on screen is what is stored

    def changed(self, *args: Any) -> None:
        """Any edit: keep the draft soon (at most DRAFT_DELAY_S later)."""
        if self._loading:
            return
        self.message = ""  # an error or "draft restored" no longer describes the form
        self._disarm()
        self._draft_trigger()

    def add_days(self, days: int) -> None:
        grid = self.app.grid
        if grid is not None:
            self.ids.follow_up.text = follow_up_after(grid.today, days)

    # -- photo (the same helpers as the report form) -----------------------------------
    def pick_photo(self) -> None:
        """Add photo: the camera on Android, the file chooser elsewhere."""
        self.message = ""
        capture.pick_photo(platform, on_chosen=self._photo_from_camera, open_chooser=self._open_chooser,
                           data_dir=self.app.config_file.data_dir)

    def _open_chooser(self, on_chosen: Any = None) -> Any:
        from .report import ReportPhotoChooser  # the desktop chooser; its layout lives in report.kv

        self._ensure_chooser_rules()
        chooser = ReportPhotoChooser(folder=capture.start_folder(), deliver=on_chosen or self.photo_chosen)
        chooser.open()
        return chooser

    @staticmethod
    def _ensure_chooser_rules() -> None:
        from kivy.lang import Builder

        kv = Path(__file__).with_name("report.kv")
        if str(kv) not in Builder.files:
            Builder.load_file(str(kv))



    # -- drafts --------------------------------------------------------------------
    def _save_draft(self, dt: float = 0) -> None:
        drafts = self.app.drafts
        if drafts is None or not self.household_id:
            return  # locked meanwhile: the store is closed
        form = self.form()
        name = visit_draft_name(self.household_id)
        try:
            if form.is_empty():
                drafts.clear(name)
            else:
                drafts.save(name, form.to_draft())
        except fieldsync.FieldsyncError as exc:
            log.error("visit draft not kept: %s", type(exc).__name__)
            self.message = self.t("visit.draft_failed", message=type(exc).__name__)

    def _flush_draft(self) -> None:
        self._draft_trigger.cancel()
        self._save_draft()

    def discard(self) -> None:
        """First tap arms, the second (within DISARM_S) deletes the draft and empties the form."""
        if not self.discard_armed:
            self.discard_armed = True
            self._disarm_trigger()
            return
        self._disarm()
        self._set_form(VisitForm())
        if self.app.drafts is not None:
            self.app.drafts.clear(visit_draft_name(self.household_id))
        self.message = self.t("visit.draft_discarded")

    def _disarm(self, *args: Any) -> None:
        self._disarm_trigger.cancel()
        self.discard_armed = False

    # -- leaving -----------------------------------------------------------------------
    def cancel(self) -> None:
        """Back to the household; the draft stays (on_pre_leave stores the last keystrokes)."""
        self.app.go("household", household_id=self.household_id)

    def save(self) -> None:
        grid = self.app.grid
        if grid is None or not self.found:
            return
        self._disarm()
        try:
            submit_visit(grid.store, self.form(), grid_id=self._grid_id, household_id=self.household_id,
                         worker_id=self.app.worker_id, today=grid.today)
        except fieldsync.ValidationError as exc:
            self.message = self._problem(exc)
            self._flush_draft()
            return
        except fieldsync.FieldsyncError as exc:  # disk full, I/O: nothing was written
            self.message = self.t("visit.save_failed", message=str(exc))
            self._flush_draft()
            return
        if self.app.drafts is not None:
            self.app.drafts.clear(visit_draft_name(self.household_id))
        self._set_form(VisitForm())
        self.app.saved()
        self.app.go("household", household_id=self.household_id, notice="common.saved")

    def _problem(self, exc: fieldsync.ValidationError) -> str:
        field_key = f"visit.field.{exc.field}"
        field = self.t(field_key) if field_key in keys() else exc.field
        key, values = problem_message(exc.problem)
        return self.t(key, field=field, **values)
