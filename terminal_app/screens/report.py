"""Report an incident: category, description, photo, location, optional household.

The form is kept as an encrypted draft while the worker types (so nothing
is lost if the app is killed) and restored when the screen opens.  A photo
is encrypted into the store as soon as it is chosen; the draft and the
report refer to it by content hash, and the thumbnail is decoded in memory.
"""

from __future__ import annotations

import re
from typing import Any

from kivy.app import App
from kivy.clock import Clock, mainthread
from kivy.properties import BooleanProperty, ListProperty, ObjectProperty, StringProperty
from kivy.uix.label import Label
from kivy.uix.popup import Popup
from kivy.utils import platform

import fieldsync

from ..services import capture
from ..services.forms import REPORT_CATEGORIES, save_report, suggest_department
from .base import FieldScreen
from .photo_field import PhotoField

__all__ = ["ReportScreen", "ReportPhotoChooser", "DRAFT", "DRAFT_DELAY_S"]


DRAFT = "report"
DRAFT_DELAY_S = 0.5
_FIELD_KEYS = {"category": "report.category", "description": "report.description", "location": "report.location",
               "attachments": "report.photo", "grid_id": "report.grid"}


class ReportPhotoChooser(Popup):
    """The desktop photo chooser (layout in report.kv): a file list filtered to photos."""

    folder = StringProperty("")
    filters = ListProperty(list(capture.PHOTO_FILTERS))
    deliver = ObjectProperty(None)  # called with (path, owned=False) for the chosen file

    def on_open(self) -> None:
        # Kivy's file list draws its own English column titles; say them in the worker's language.
        app = App.get_running_app()
        for widget in self.ids.files.walk(restrict=True):
            if isinstance(widget, Label) and widget.text in ("Name", "Size"):
                widget.text = app.t(f"report.photo.column_{widget.text.lower()}")

    def use(self, selection: list[str]) -> None:
        if not selection:
            return
        self.dismiss()
        if self.deliver is not None:
            self.deliver(selection[0], False)


class ReportScreen(PhotoField, FieldScreen):
    locked_message = "report.locked"
    category = StringProperty("")
    suggestion = StringProperty("")
    household_id = StringProperty("")
    household_label = StringProperty("")
    grid_id = StringProperty("")
    grid_choices = ListProperty([])  # grid names, shown only when the worker has several grids
    grid_label = StringProperty("")
    photo_hash = StringProperty("")
    thumb_texture = ObjectProperty(None, allownone=True)
    photo_status = StringProperty("")
    photo_button = StringProperty("")
    gps_text = StringProperty("")
    gps_on = BooleanProperty(False)
    confirm_clear = BooleanProperty(False)  # the clear button asks once more before erasing the draft
    photo_folder = StringProperty("")  # where the desktop chooser opens ("" = the pictures folder)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._draft_event: Any = None
        self._restoring = False
        self._fix: capture.GpsFix | None = None
        self._gps_problem = ""
        self._grids: dict[str, str] = {}  # name -> id
        self.location = capture.LocationSource(platform)
        self.chooser: ReportPhotoChooser | None = None

    # -- opening ---------------------------------------------------------------
    def prepare(self, household_id: str | None = None, **params: Any) -> None:
        """Open the form with its draft; ``household_id`` links the report to a household."""
        self.flush_draft()
        self.message = ""
        self.confirm_clear = False
        self._load_grids()
        draft = self.app.drafts.load(DRAFT) if self.app.drafts is not None else {}
        self._restore(draft)
        if household_id:
            self._set_household(household_id)
            self.save_draft()
        if any(draft.get(k) for k in ("category", "description", "photo", "place")):
            self.message = self.t("report.draft_restored")
        capture.discard_leftovers(self.app.config_file.data_dir)

    def on_enter(self, *args: Any) -> None:
        if self.location.available and not self.location.running and self._fix is None:
            self._gps_problem = ""
            self.location.start(self._gps_fix, self._gps_failed)
        self._show_gps()

    def on_pre_leave(self, *args: Any) -> None:
        self.flush_draft()
        self.location.stop()
        if self.app.session.store is None:  # locking: nothing of the form stays on screen or in memory
            self._restoring = True
            try:
                self.ids.description.text = self.ids.place.text = ""
            finally:
                self._restoring = False
            self.category = self.household_id = self.household_label = self.photo_hash = ""
            self.thumb_texture = None
            self._fix = None

    def refresh(self) -> None:
        """Texts that depend on the language or on synced data (never the worker's typing)."""
        self.suggestion = self._suggestion(self.category)
        self._show_household()
        self._load_grids()
        self._show_photo_texts()
        self._show_gps()

    def _restore(self, draft: dict[str, Any]) -> None:
        self._restoring = True
        try:
            self.category = draft.get("category") if draft.get("category") in REPORT_CATEGORIES else ""
            self.ids.description.text = str(draft.get("description") or "")
            self.ids.place.text = str(draft.get("place") or "")
            self.household_id = str(draft.get("household_id") or "")
            gid = str(draft.get("grid_id") or "")
            if gid in self._grids.values():
                self.grid_id = gid
            gps = draft.get("gps")
            if isinstance(gps, dict) and all(isinstance(gps.get(k), (int, float)) for k in ("lat", "lon")):
                acc = gps.get("accuracy")
                self._fix = capture.GpsFix(float(gps["lat"]), float(gps["lon"]),
                                           float(acc) if isinstance(acc, (int, float)) else None)
            else:
                self._fix = None
            self._set_photo(str(draft.get("photo") or ""))
        finally:
            self._restoring = False
        self.refresh()

    # -- the form ---------------------------------------------------------------
    def set_category(self, category: str) -> None:
        self.category = category if category in REPORT_CATEGORIES else ""
        self.suggestion = self._suggestion(self.category)
        self.changed()

    def _suggestion(self, category: str) -> str:
        dept = suggest_department(category) if category else None
        return self.t("report.suggested", department=self.t(f"dept.{dept}")) if dept else ""

    def _set_household(self, household_id: str) -> None:
        self.household_id = household_id
        self._show_household()

    def unlink_household(self) -> None:
        self._set_household("")
        self.changed()

    def _show_household(self) -> None:
        label = ""
        store = self.app.session.store
        if self.household_id and store is not None:
            try:
                h = store.get("households", self.household_id)
            except fieldsync.RecordNotFound:
                h = {}
            place = "".join(str(h.get(k) or "") for k in ("building", "unit", "room")) or str(h.get("address") or "")
            name = str(h.get("head_name") or "")
            label = self.t("report.for_household", place=f"{place} {name}".strip() or self.household_id[:8])
        self.household_label = label

    def _load_grids(self) -> None:
        store = self.app.session.store
        grids = store.list("grids") if store is not None else []
        self._grids = {str(g.get("name") or g["id"]): g["id"] for g in sorted(grids, key=lambda g: g["id"])}
        self.grid_choices = list(self._grids) if len(self._grids) > 1 else []
        if self.grid_id not in self._grids.values():
            self.grid_id = next(iter(self._grids.values()), "")
        self.grid_label = next((n for n, i in self._grids.items() if i == self.grid_id), "")

    def choose_grid(self, name: str) -> None:
        if name in self._grids and self._grids[name] != self.grid_id:
            self.grid_id = self._grids[name]
            self.grid_label = name
            self.changed()

    def changed(self, *args: Any) -> None:
        """Something was typed or chosen: save the draft soon (debounced)."""
        if self._restoring:
            return
        self.confirm_clear = False
        if self._draft_event is not None:
            self._draft_event.cancel()
        self._draft_event = Clock.schedule_once(lambda dt: self.save_draft(), DRAFT_DELAY_S)

    def flush_draft(self) -> None:
        """Save a pending draft now (leaving the screen)."""
        if self._draft_event is not None:
            self._draft_event.cancel()
            self._draft_event = None
            self.save_draft()

    def form(self) -> dict[str, Any]:
        return {
            "category": self.category, "description": self.ids.description.text, "place": self.ids.place.text,
            "photo": self.photo_hash, "household_id": self.household_id, "grid_id": self.grid_id,
            "gps": self._fix.as_location() if self._fix else None,
        }

    def save_draft(self) -> None:
        self._draft_event = None
        drafts = self.app.drafts
        if drafts is None:  # locked meanwhile; the last half second of typing is not kept
            return
        try:
            drafts.save(DRAFT, self.form())
        except fieldsync.FieldsyncError as exc:
            self.message = self.t("common.unknown_error", message=type(exc).__name__)

    def clear_form(self) -> None:
        """Erase the form and its draft (the button asks twice)."""
        if not self.confirm_clear:
            self.confirm_clear = True
            self.message = self.t("report.clear_confirm")
            return
        self.confirm_clear = False
        if self.app.drafts is not None:
            self.app.drafts.clear(DRAFT)
        if self._draft_event is not None:
            self._draft_event.cancel()
            self._draft_event = None
        self._restore({"grid_id": self.grid_id})
        self.message = ""

    # -- photo ------------------------------------------------------------------
    def pick_photo(self) -> None:
        """The photo button: the camera on Android, the file chooser elsewhere."""
        self.message = ""
        capture.pick_photo(platform, on_chosen=self._photo_from_camera, open_chooser=self.open_chooser,
                           data_dir=self.app.config_file.data_dir)

    def open_chooser(self, on_chosen: Any = None) -> ReportPhotoChooser:
        """Open the desktop file chooser; the chosen file goes to ``on_chosen`` (default :meth:`photo_chosen`)."""
        self.chooser = ReportPhotoChooser(folder=self.photo_folder or capture.start_folder(),
                                          deliver=on_chosen or self.photo_chosen)
        self.chooser.open()
        return self.chooser

    def photo_stored(self) -> None:
        if self.thumb_texture is not None:
            self.message = self.t("report.photo.saved")

    def photo_shown(self) -> None:
        self._show_photo_texts()

    def _show_photo_texts(self) -> None:
        camera = capture.photo_source(platform) == "camera"
        if self.photo_hash:
            self.photo_button = self.t("report.photo.retake" if camera else "report.photo.rechoose")
            self.photo_status = ""
        else:
            self.photo_button = self.t("report.photo.camera" if camera else "report.photo.choose")
            self.photo_status = self.t("report.photo.none")

    # -- location -----------------------------------------------------------------
    @mainthread
    def _gps_fix(self, fix: capture.GpsFix) -> None:
        self._fix = fix
        self._show_gps()
        self.changed()

    @mainthread
    def _gps_failed(self, code: str) -> None:
        self._gps_problem = code
        self._show_gps()

    def _show_gps(self) -> None:
        self.gps_on = self.location.available or self._fix is not None
        if self._fix is not None:
            lat, lon = f"{self._fix.lat:.5f}", f"{self._fix.lon:.5f}"
            self.gps_text = (self.t("report.gps.fix", lat=lat, lon=lon, accuracy=round(self._fix.accuracy))
                             if self._fix.accuracy is not None else self.t("report.gps.fix_plain", lat=lat, lon=lon))
        elif self._gps_problem:
            self.gps_text = self.t(f"report.gps.{self._gps_problem}")
        elif self.location.available:
            self.gps_text = self.t("report.gps.waiting")
        else:
            self.gps_text = ""

    # -- saving -----------------------------------------------------------------
    def save(self) -> None:
        app = self.app
        store = app.session.store
        if store is None:
            self.message = self.t("report.locked")
            return
        description = self.ids.description.text.strip()
        location = capture.location_value(self._fix, self.ids.place.text)
        grid_id = self.grid_id
        if self.household_id:
            try:
                grid_id = store.get("households", self.household_id).get("grid_id") or grid_id
            except fieldsync.RecordNotFound:
                self.household_id = ""
        if not self.category:
            self.message = self.t("report.need_category")
            return
        if not description:
            self.message = self.t("report.need_description")
            return
        if location is None and not self.household_id:
            self.message = self.t("report.need_location")
            return
        if not grid_id:
            self.message = self.t("report.no_grid")
            return
        if self.photo_hash and not store.attachments.exists(self.photo_hash):
            self._set_photo("")
            self.message = self.t("report.photo.error.missing_in_store")
            return
        try:
            save_report(store, grid_id=grid_id, reporter_id=app.worker_id, category=self.category,
                        description=description, location=location, household_id=self.household_id or None,
                        attachments=[self.photo_hash] if self.photo_hash else None)
        except fieldsync.ValidationError as exc:
            self.message = self._problem(exc)
            return
        except fieldsync.FieldsyncError as exc:
            self.message = self.t("common.unknown_error", message=str(exc))
            return
        if self._draft_event is not None:
            self._draft_event.cancel()
            self._draft_event = None
        if app.drafts is not None:
            app.drafts.clear(DRAFT)
        self._restore({"grid_id": self.grid_id})
        app.saved()
        app.go("inbox")
        app.screen.message = self.t("report.saved")

    def _problem(self, exc: fieldsync.ValidationError) -> str:
        field = self.t(_FIELD_KEYS[exc.field]) if exc.field in _FIELD_KEYS else exc.field
        if exc.problem == "is required":
            return self.t("common.required", field=field)
        too_long = re.fullmatch(r"must be at most (\d+) characters", exc.problem)
        if too_long:
            return self.t("report.too_long", field=field, n=int(too_long[1]))
        return self.t("report.invalid", field=field, problem=exc.problem)
