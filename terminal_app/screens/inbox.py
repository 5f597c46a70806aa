"""The worker's inbox: open tasks, and their reports with the status the command centre set.

The list is a RecycleView; tapping a row opens its detail in the same
screen (``mode == "detail"``): a report's fields, its photo, its timeline
(status, time, who) and, when the department says it is resolved, the
worker's two choices (confirm or reopen).  Only moves that
:func:`fieldsync.workflow.transition_allowed` grants a worker are offered.

A report's photo this tablet does not hold (the department's photo of the
fixed problem, or one evicted from the cache) is downloaded when the report
is opened, on a background thread; the screen says "下载中…" and shows the
photo when it has arrived (``@mainthread``).
"""

from __future__ import annotations

import io
from typing import Any

from kivy.app import App
from kivy.clock import mainthread
from kivy.core.image import Image as CoreImage
from kivy.factory import Factory
from kivy.metrics import dp
from kivy.properties import BooleanProperty, ListProperty, ObjectProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout

import fieldsync
import fieldsync.sync

from ..services import capture
from ..services.forms import REPORT_CATEGORIES
from ..services.inbox import (
    InboxItem,
    actor_of,
    describe_location,
    inbox,
    my_move,
    report_steps,
    set_report_status,
    short_time,
    task_household,
    worker_actions,
)
from .base import FieldScreen

__all__ = ["InboxScreen", "InboxRowView", "InboxTimelineStep", "InboxDetailField", "STATUS_COLORS"]

DEPARTMENTS = frozenset(REPORT_CATEGORIES.values())
STATUS_COLORS: dict[str, tuple[float, float, float, float]] = {
    "submitted": (0.45, 0.50, 0.58, 1),
    "dispatched": (0.20, 0.55, 0.95, 1),
    "in_progress": (0.90, 0.60, 0.15, 1),
    "resolved": (0.20, 0.70, 0.40, 1),
    "confirmed": (0.15, 0.50, 0.30, 1),
    "reopened": (0.85, 0.35, 0.30, 1),
    "rejected": (0.60, 0.30, 0.30, 1),
    "open": (0.55, 0.40, 0.85, 1),
}
_GREY = (0.45, 0.50, 0.58, 1)
ROW_DP = 104
HEADER_DP = 44


class InboxRowView(ButtonBehavior, BoxLayout):
    kind = StringProperty("")
    item_id = StringProperty("")
    title = StringProperty("")
    line2 = StringProperty("")
    line3 = StringProperty("")
    badge = StringProperty("")
    badge_color = ListProperty(list(_GREY))
    highlight = BooleanProperty(False)  # waiting for the worker (resolved: confirm or reopen)

    def on_release(self) -> None:
        App.get_running_app().screen.open_item(self.kind, self.item_id)


class InboxTimelineStep(BoxLayout):
    status_text = StringProperty("")
    detail = StringProperty("")
    dot_color = ListProperty(list(_GREY))
    last = BooleanProperty(False)


class InboxDetailField(BoxLayout):
    label = StringProperty("")
    value = StringProperty("")


class InboxScreen(FieldScreen):
    title = StringProperty("")
    rows = ListProperty([])
    empty_text = StringProperty("")
    mode = StringProperty("list")  # "list" | "detail"
    detail_kind = StringProperty("")
    detail_id = StringProperty("")
    d_title = StringProperty("")
    d_status = StringProperty("")
    d_status_color = ListProperty(list(_GREY))
    d_prompt = StringProperty("")
    d_photo = ObjectProperty(None, allownone=True)
    d_photo_note = StringProperty("")  # 下载中… while a photo is on its way
    d_household = StringProperty("")
    photos = capture.PhotoFetch()  # one per app: a download outlives the screen being left

    # -- opening ------------------------------------------------------------------
    def prepare(self, report_id: str | None = None, task_id: str | None = None, **params: Any) -> None:
        """Open the list, or straight at one report or task."""
        self.message = ""
        self.ids.list.scroll_y = 1
        if report_id:
            self.mode, self.detail_kind, self.detail_id = "detail", "report", report_id
        elif task_id:
            self.mode, self.detail_kind, self.detail_id = "detail", "task", task_id
        else:
            self.back()

    def on_pre_leave(self, *args: Any) -> None:
        if self.app.session.store is None:  # locking: no record stays on screen or in memory
            self.back()
            self.rows = []

    def refresh(self) -> None:
        store = self.app.session.store
        if store is None:
            self.rows = []
            return
        items = inbox(store, self.app.worker_id)
        tasks = [i for i in items if i.kind == "task"]
        # reports waiting for the worker (resolved: confirm or reopen) first, each group newest first
        reports = sorted((i for i in items if i.kind == "report"), key=lambda i: not worker_actions(i.status))
        waiting = sum(1 for i in reports if worker_actions(i.status))
        self.title = self.t("inbox.title_waiting", n=waiting) if waiting else self.t("inbox.title")
        rows: list[dict[str, Any]] = []
        if tasks:
            rows.append(self._header(self.t("inbox.tasks", n=len(tasks))))
            rows += [self._task_row(i, " ".join(str(store.get("tasks", i.id).get("notes") or "").split()))
                     for i in tasks]
        if reports:
            rows.append(self._header(self.t("inbox.reports", n=len(reports))))
            rows += [self._report_row(i) for i in reports]
        self.rows = rows
        self.empty_text = "" if rows else self.t("inbox.empty")
        if self.mode == "detail":
            self._show_detail()

    @staticmethod
    def _header(text: str) -> dict[str, Any]:
        return {"viewclass": "InboxHeaderView", "text": text, "size": (None, dp(HEADER_DP))}

    def _task_row(self, item: InboxItem, notes: str) -> dict[str, Any]:
        due = self.t("inbox.due", day=item.when[5:] if item.when[:4] == str(self._year()) else item.when) \
            if item.when else self.t("inbox.no_due")
        return {"viewclass": "InboxRowView", "kind": "task", "item_id": item.id, "title": item.title,
                "line2": notes, "line3": due, "badge": self.t("inbox.task"),
                "badge_color": list(STATUS_COLORS["open"]), "highlight": False,
                "size": (None, dp(ROW_DP))}

    def _report_row(self, item: InboxItem) -> dict[str, Any]:
        category, _, description = item.title.partition(": ")
        cat = self.t(f"cat.{category}") if category in REPORT_CATEGORIES else category
        dept = self.t(f"dept.{item.department}") if item.department in DEPARTMENTS else (item.department or "")
        when = self.t("inbox.reported", when=short_time(item.when, self.app.today))
        line3 = " · ".join(p for p in (dept or self.t("inbox.not_dispatched"), when) if p)
        return {"viewclass": "InboxRowView", "kind": "report", "item_id": item.id, "title": cat,
                "line2": " ".join(description.split()), "line3": line3,
                "badge": self.t(f"status.{item.status}"), "badge_color": list(STATUS_COLORS.get(item.status, _GREY)),
                "highlight": bool(worker_actions(item.status)), "size": (None, dp(ROW_DP))}

    def _year(self) -> int:
        from datetime import date

        return (self.app.today or date.today()).year

    # -- detail -------------------------------------------------------------------
    def open_item(self, kind: str, item_id: str) -> None:
        self.message = ""
        self.detail_kind, self.detail_id, self.mode = kind, item_id, "detail"
        self._show_detail()
        self.ids.detail_scroll.scroll_y = 1

    def back(self) -> None:
        self.message = ""
        self.mode, self.detail_kind, self.detail_id = "list", "", ""
        self.d_photo = None
        self.d_photo_note = ""
        self.d_prompt = ""
        self.d_household = ""
        for box in ("detail_fields", "timeline_box", "actions_box"):
            self.ids[box].clear_widgets()

    def _show_detail(self) -> None:
        store = self.app.session.store
        if store is None:
            return
        collection = "reports" if self.detail_kind == "report" else "tasks"
        try:
            record = store.get(collection, self.detail_id)
        except fieldsync.RecordNotFound:
            self.back()
            self.message = self.t("inbox.gone")
            return
        for box in ("detail_fields", "timeline_box", "actions_box"):
            self.ids[box].clear_widgets()
        self.d_photo = None
        self.d_photo_note = ""
        self.d_prompt = ""
        if self.detail_kind == "report":
            self._show_report(store, record)
        else:
            self._show_task(record)

    def _field(self, label_key: str, value: str) -> None:
        if value:
            self.ids.detail_fields.add_widget(InboxDetailField(label=self.t(label_key), value=value))

    def _show_report(self, store: fieldsync.Store, report: dict[str, Any]) -> None:
        category = str(report.get("category") or "")
        self.d_title = self.t(f"cat.{category}") if category in REPORT_CATEGORIES else category
        status = str(report.get("status") or "submitted")
        self.d_status = self.t(f"status.{status}")
        self.d_status_color = list(STATUS_COLORS.get(status, _GREY))
        self.d_household = ""
        dept = report.get("department")
        self._field("inbox.department", self.t(f"dept.{dept}") if dept in DEPARTMENTS
                    else (dept or self.t("inbox.not_dispatched")))
        self._field("inbox.reported_at", short_time(report.get("reported_at"), self.app.today))
        self._field("inbox.due_at", short_time(report.get("due_at"), self.app.today))
        self._field("inbox.location", describe_location(report.get("location")))
        self._field("inbox.description", str(report.get("description") or ""))
        self._show_photo(store, report)
        steps = report_steps(report, my_move(store, self.detail_id))
        for n, step in enumerate(steps):
            st = str(step.get("status") or "")
            self.ids.timeline_box.add_widget(InboxTimelineStep(
                status_text=self.t(f"status.{st}"), detail=self._step_detail(step, report.get("department")),
                dot_color=list(STATUS_COLORS.get(st, _GREY)), last=n == len(steps) - 1))
        actions = worker_actions(status)
        if actions:
            self.d_prompt = self.t("inbox.ask_resolved")
        for new in actions:
            button = Factory.InboxActionButton(text=self.t(f"inbox.action.{new}"))
            button.status = new
            button.background_color = STATUS_COLORS.get(new, _GREY)
            button.bind(on_release=lambda b: self.move_report(b.status))
            self.ids.actions_box.add_widget(button)

    # -- the photo ----------------------------------------------------------------
    def _show_photo(self, store: fieldsync.Store, report: dict[str, Any]) -> None:
        """The report's first photo: from the store, or fetched from the server now."""
        for content_hash in report.get("attachments") or []:
            if not isinstance(content_hash, str):
                continue
            where = capture.fetch_photo(self.photos, store, self._photo_client, content_hash,
                                        on_progress=self._photo_progress, on_done=self._photo_done)
            if where == "fetching":
                self.d_photo_note = self.t("sync.photo_downloading")
                return
            try:
                small, kind = capture.thumbnail(store.attachments.read(content_hash))
                self.d_photo = CoreImage(io.BytesIO(small), ext=kind).texture
            except (fieldsync.FieldsyncError, capture.PhotoError):
                continue
            return

    def _photo_client(self) -> fieldsync.sync.SyncClient | None:
        """A sync client for a download (called on the download's thread)."""
        store = self.app.session.store
        if store is None:
            return None
        return fieldsync.sync.SyncClient(store, self.app.session.transport(), retries=1, backoff_s=0.5,
                                         max_backoff_s=2)

    def _showing_photo(self, content_hash: str) -> bool:
        store = self.app.session.store
        if store is None or self.mode != "detail" or self.detail_kind != "report":
            return False
        try:
            return content_hash in (store.get("reports", self.detail_id).get("attachments") or [])
        except fieldsync.FieldsyncError:
            return False

    @mainthread
    def _photo_progress(self, content_hash: str, percent: int) -> None:
        if self._showing_photo(content_hash) and self.d_photo is None:
            self.d_photo_note = self.t("sync.photo_downloading_percent", percent=percent)

    @mainthread
    def _photo_done(self, content_hash: str, problem: str | None, detail: str) -> None:
        if not self._showing_photo(content_hash):
            return  # the worker moved on (or locked the tablet): nothing to show
        store = self.app.session.store
        if problem is None and store is not None:
            self.d_photo_note = ""
            self._show_photo(store, store.get("reports", self.detail_id))
        elif problem == "pending":
            self.d_photo_note = self.t("sync.photo_not_uploaded")
        else:
            self.d_photo_note = self.t("sync.photo_unavailable", message=detail)

    def _step_detail(self, step: dict[str, Any], department: str | None = None) -> str:
        when = short_time(step.get("at"), self.app.today) or self.t("inbox.time_unknown")
        kind, name = actor_of(str(step.get("by") or ""), self.app.worker_id, DEPARTMENTS,
                              role=step.get("role"), department=department)
        if kind == "me":
            who = self.t("inbox.by.me")
        elif kind == "command":
            who = self.t("inbox.by.command")
        elif kind == "department":
            who = self.t(f"dept.{name}") if name else self.t("inbox.by.department_unnamed")
        else:
            who = name
        return " · ".join(p for p in (when, who) if p)

    def _show_task(self, task: dict[str, Any]) -> None:
        self.d_title = str(task.get("title") or task.get("kind") or "")
        status = str(task.get("status") or "open")
        self.d_status = self.t("inbox.task")
        self.d_status_color = list(STATUS_COLORS["open"])
        self._field("inbox.kind", str(task.get("kind") or ""))
        self._field("inbox.due_at", str(task.get("due") or "") or self.t("inbox.no_due"))
        self._field("inbox.notes", str(task.get("notes") or ""))
        self.d_household = (task_household(task) or "") if status == "open" else ""

    def open_household(self) -> None:
        if self.d_household:
            self.app.go("household", household_id=self.d_household)

    # -- the worker's moves -------------------------------------------------------
    def move_report(self, new: str) -> None:
        """Confirm or reopen the open report (only moves a worker may make)."""
        store = self.app.session.store
        if store is None or self.detail_kind != "report":
            return
        try:
            set_report_status(store, self.detail_id, new)
        except fieldsync.ValidationError as exc:
            self.message = self.t("inbox.not_allowed", detail=exc.problem)
            return
        except fieldsync.FieldsyncError as exc:
            self.message = self.t("common.unknown_error", message=str(exc))
            return
        self.app.saved()
        self.refresh()
        self.message = self.t(f"inbox.done.{new}")
