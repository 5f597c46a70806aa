"""Review: changes the district refused (fix and resubmit, or give up) and sync conflicts (keep or restore).

Everything shown comes from :mod:`terminal_app.services.review`; this module
only turns items into words and cards.  A rejection is explained in a plain
sentence (its code, the record, the field and what was sent); "fix and
resubmit" opens an editor for the field at fault, prefilled with the value
that was sent, and nothing is saved while the store still refuses it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from kivy.clock import Clock
from kivy.factory import Factory
from kivy.metrics import dp
from kivy.properties import BooleanProperty, NumericProperty, ObjectProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

import fieldsync

from ..i18n import keys
from ..services.review import (
    ReviewItem,
    can_resubmit,
    dismiss_rejection,
    field_choices,
    grid_names,
    keep_conflict,
    label_of,
    open_counts,
    parse_input,
    problem_key,
    record_label,
    restore_conflict,
    resubmit_rejection,
    review_items,
    stamp_origin,
    value_text,
)
from .base import FieldScreen

__all__ = ["ReviewScreen", "RejectionCard", "ConflictCard", "RejectionActions", "RejectionEditor", "MAX_SHOWN"]

MAX_SHOWN = 50  # cards built at once; the rest appear as these are dealt with
_LONG = 60  # characters of a sent value shown before "…"


class RejectionCard(BoxLayout):
    screen = ObjectProperty(None, allownone=True)
    seq = NumericProperty(0)
    when = StringProperty("")
    reason = StringProperty("")
    record_line = StringProperty("")
    field_line = StringProperty("")
    sent = StringProperty("")
    fixable = BooleanProperty(False)
    editing = BooleanProperty(False)


class RejectionActions(BoxLayout):
    card = ObjectProperty(None, allownone=True)


class RejectionEditor(BoxLayout):
    card = ObjectProperty(None, allownone=True)
    label = StringProperty("")
    has_choices = BooleanProperty(False)
    choice = StringProperty("")
    error = StringProperty("")
    can_submit = BooleanProperty(True)
    hint = StringProperty("")


class ConflictCard(BoxLayout):
    screen = ObjectProperty(None, allownone=True)
    conflict_id = StringProperty("")
    when = StringProperty("")
    record_line = StringProperty("")
    field_line = StringProperty("")
    kept = StringProperty("")
    kept_by = StringProperty("")
    lost = StringProperty("")
    lost_by = StringProperty("")


_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M")


class ReviewScreen(FieldScreen):
    title = StringProperty("")
    empty = BooleanProperty(False)
    more = StringProperty("")
    message_ok = BooleanProperty(True)  # the message reports success (green) rather than a problem

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._items: dict[str, ReviewItem] = {}
        self._editing: int | None = None  # seq of the rejection whose editor is open
        self._draft = ""  # the editor's text, kept across refreshes (a sync finishing, a language change)
        self._known: set[str] = set()
        self._households: dict[str, str] = {}  # household id -> door label, filled as needed per refresh
        self._edit_said: tuple[str, dict[str, Any]] | None = None  # the open editor's error, kept across refreshes
        self._said: tuple[str, dict[str, Any]] | None = None  # the last action's message, re-said in a new language

    def prepare(self, **params: Any) -> None:
        self._say(None)
        self._editing = None
        self._draft = ""

    def _text(self, key: str, values: dict[str, Any]) -> str:
        """Translate ``key``; a value given as a function is worked out now, in the current language."""
        return self.t(key, **{k: (v() if callable(v) else v) for k, v in values.items()})

    def _say(self, key: str | None, ok: bool = True, **values: Any) -> None:
        self._said = (key, values) if key else None
        self.message_ok = ok
        self.message = self._text(key, values) if key else ""

    # -- words ------------------------------------------------------------------
    def _has(self, key: str) -> bool:
        return key in self._known

    def _kind(self, collection: str) -> str:
        key = f"review.kind.{collection}"
        return self.t(key) if self._has(key) else collection

    def _field(self, name: str | None) -> str:
        key = f"review.field.{name}"
        return self.t(key) if self._has(key) else str(name or "")

    def _value(self, field: str | None, value: Any, grids: dict[str, str]) -> str:
        """A value as words: statuses and grids by name, lists joined, long text cut."""
        if value is None or value == "" or value == []:
            return self.t("review.empty_value")
        if field == "status" and isinstance(value, str) and self._has(f"status.{value}"):
            return self.t(f"status.{value}")
        if field == "grid_id" and isinstance(value, str):
            return grids.get(value, value)
        if field == "household_id" and isinstance(value, str):
            return self._household(value)
        if isinstance(value, str) and _ISO_DATETIME.match(value):
            try:
                return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
            except ValueError:
                pass
        if isinstance(value, bool):
            return self.t("review.yes" if value else "review.no")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            return self.t("review.n_entries", n=len(value))
        text = value_text(value)
        return text if len(text) <= _LONG else text[:_LONG - 1] + "…"

    def _household(self, household_id: str) -> str:
        if household_id not in self._households:
            store = self.app.session.store
            try:
                label = record_label("households", store.get("households", household_id)) if store else ""
            except fieldsync.FieldsyncError:
                label = ""
            self._households[household_id] = label or household_id
        return self._households[household_id]

    def _problem(self, problem: str) -> str:
        key, values = problem_key(problem)
        if "choices" in values:
            values["choices"] = "、".join(
                self.t(f"status.{c}") if self._has(f"status.{c}") else c for c in values["choices"].split(", "))
        return self.t(key, **values)

    def _reason(self, item: ReviewItem, grids: dict[str, str]) -> str:
        kind, field = self._kind(item.collection), self._field(item.field)
        sent = item.values.get(item.field) if item.field else None
        if item.code == "out_of_scope":
            if item.field and item.field in item.values:
                return self.t("review.reason.out_of_scope", kind=kind, value=grids.get(str(sent), str(sent)))
            return self.t("review.reason.out_of_scope_record", kind=kind)
        if item.code == "validation_failed":
            return self.t("review.reason.validation_failed", kind=kind, field=field,
                          problem=self._problem(item.message))
        if item.code == "transition_not_allowed":
            return self.t("review.reason.transition_not_allowed", kind=kind, value=self._value("status", sent, grids))
        if item.code == "field_not_allowed":
            return self.t("review.reason.field_not_allowed", field=field)
        if item.code == "unknown_kind":
            return self.t("review.reason.unknown_kind", kind=item.collection)
        return self.t("review.reason.other", message=item.message or item.code)

    def _record_line(self, store: fieldsync.Store, item: ReviewItem) -> str:
        label = label_of(store, item)
        kind = self._kind(item.collection)
        return self.t("review.record", kind=kind, label=label) if label else self.t("review.record_no_label", kind=kind)

    def _sent(self, store: fieldsync.Store, item: ReviewItem, grids: dict[str, str]) -> str:
        try:
            order = list(store.registry.get(item.collection).fields)
        except fieldsync.UnknownKindError:
            order = []
        names = [n for n in order if n in item.values] + sorted(n for n in item.values if n not in order)
        return "\n".join(self.t("review.pair", field=self._field(n), value=self._value(n, item.values[n], grids))
                         for n in names)

    def _by(self, store: fieldsync.Store, stamp: Any) -> str:
        mine, ms = stamp_origin(store, stamp)
        if mine is None:
            return ""
        who = self.t("review.by_me" if mine else "review.by_other")
        return self.t("review.by_when", who=who, when=_when(ms)) if ms else who

    # -- building the list --------------------------------------------------------
    def refresh(self) -> None:
        box = self.ids.cards
        box.clear_widgets()
        store = self.app.session.store
        if store is None:
            self._items = {}
            self.title, self.empty, self.more = self.t("review.title_empty"), True, ""
            return
        self._known = set(keys())
        self._households = {}
        if self._said is not None:
            self.message = self._text(*self._said)
        items = review_items(store)
        self._items = {f"{i.kind}:{i.key}": i for i in items}
        grids = grid_names(store)
        self.empty = not items
        self.title = self.t("review.title", n=len(items)) if items else self.t("review.title_empty")
        shown = items[:MAX_SHOWN]
        self.more = self.t("review.more", shown=len(shown), n=len(items)) if len(items) > len(shown) else ""
        if self._editing is not None and f"rejection:{self._editing}" not in self._items:
            self._editing = None
        returned = {str(r.seq): r.created_ms for r in store.rejections()}
        for item in shown:
            box.add_widget(self._rejection_card(store, item, grids, returned.get(item.key))
                           if item.kind == "rejection" else self._conflict_card(store, item, grids))

    def _rejection_card(self, store: fieldsync.Store, item: ReviewItem, grids: dict[str, str],
                        rej_ms: int | None) -> RejectionCard:
        card = RejectionCard(
            screen=self, seq=int(item.key), when=_when(rej_ms), reason=self._reason(item, grids),
            record_line=self._record_line(store, item),
            field_line=self.t("review.field", field=self._field(item.field)) if item.field else "",
            sent=self._sent(store, item, grids), fixable=can_resubmit(item),
        )
        if self._editing == card.seq and card.fixable:
            self._open_editor(card, self._draft)
        else:
            card.ids.slot.add_widget(self._actions(card))
        return card

    @staticmethod
    def _actions(card: RejectionCard) -> RejectionActions:
        actions = RejectionActions(card=card)
        if not card.fixable:  # only giving up is possible: one full-width button
            actions.remove_widget(actions.ids.fix)
        return actions

    def _conflict_card(self, store: fieldsync.Store, item: ReviewItem, grids: dict[str, str]) -> ConflictCard:
        try:
            log = store.get("conflicts", item.key)
        except fieldsync.RecordNotFound:
            log = {}
        _, kept_ms = stamp_origin(store, log.get("kept_stamp"))
        return ConflictCard(
            screen=self, conflict_id=item.key, when=_when(kept_ms), record_line=self._record_line(store, item),
            field_line=self.t("review.field", field=self._field(item.field)),
            kept=self._value(item.field, item.values.get("kept"), grids),
            lost=self._value(item.field, item.values.get("lost"), grids),
            kept_by=self._by(store, log.get("kept_stamp")), lost_by=self._by(store, log.get("lost_stamp")),
        )

    # -- rejections ---------------------------------------------------------------
    def _open_editor(self, card: RejectionCard, text: str | None = None) -> None:
        store = self.app.session.store
        item = self._items.get(f"rejection:{card.seq}")
        if store is None or item is None or not item.field:
            return
        card.editing = True
        editor = RejectionEditor(card=card, label=self.t("review.edit_label", field=self._field(item.field)))
        choices = field_choices(store, item)
        sent = item.values.get(item.field)
        if choices is not None:
            editor.has_choices = True
            editor.can_submit = bool(choices)
            if not choices:
                self._edit_error(editor, "review.no_choice")
            grids = grid_names(store)
            editor.remove_widget(editor.ids.value)  # a choice, not typing
            editor.remove_widget(editor.ids.hint)
            for value in choices:
                chip = Factory.ReviewChoice(text=self._value(item.field, value, grids), group=f"fix-{card.seq}")
                chip.value = value
                chip.bind(on_release=lambda c: setattr(editor, "choice", c.value if c.state == "down" else ""))
                editor.ids.choices.add_widget(chip)
            if text is None and len(choices) == 1:
                text = choices[0]  # the only possible answer: one tap to resubmit
            if text in choices or (text is None and sent in choices):
                editor.choice = str(text if text in choices else sent)
                for chip in editor.ids.choices.children:
                    chip.state = "down" if chip.value == editor.choice else "normal"
            editor.bind(choice=lambda _w, value: setattr(self, "_draft", value))
        else:
            if text is None:  # a field the worker may not set at all can only be left out
                text = "" if item.code == "field_not_allowed" else value_text(sent)
            editor.hint = self.t("review.edit_hint_leave_out" if item.code == "field_not_allowed"
                                 else "review.edit_hint")
            editor.ids.value.text = text
            editor.ids.value.bind(text=lambda _w, value: setattr(self, "_draft", value))
        if text is not None and self._edit_said is not None and not editor.error:
            editor.error = self._text(*self._edit_said)  # re-said after a refresh
        card.ids.slot.clear_widgets()
        card.ids.slot.add_widget(editor)
        self._editing = card.seq
        self._draft = editor.choice if editor.has_choices else editor.ids.value.text

    def fix(self, card: RejectionCard) -> None:
        """"Fix and resubmit": open the editor for the field at fault (one editor at a time)."""
        if self._editing is not None and self._editing != card.seq:
            self._editing = None
            self.refresh()
            card = next((c for c in self.ids.cards.children if getattr(c, "seq", None) == card.seq), card)
        self._say(None)
        self._edit_said = None
        self._open_editor(card, None)
        editor = card.ids.slot.children[0] if card.ids.slot.children else None
        if editor is not None:  # once laid out, bring the editor into view
            Clock.schedule_once(lambda _dt: self._bring_into_view(editor), 0)

    def _bring_into_view(self, widget: Any) -> None:
        scroll = self.ids.scroll
        # Kivy's scroll_to leaves scroll_y outside 0..1 when the list is shorter than the screen.
        if widget.get_root_window() is None or self.ids.cards.height <= scroll.height:
            return
        scroll.scroll_to(widget, padding=dp(24), animate=False)
        scroll.scroll_y = min(1.0, max(0.0, scroll.scroll_y))

    def _edit_error(self, editor: RejectionEditor, key: str, **values: Any) -> None:
        self._edit_said = (key, values)
        editor.error = self._text(key, values)

    def cancel_edit(self, card: RejectionCard) -> None:
        self._editing = None
        self._draft = ""
        self._edit_said = None
        card.editing = False
        card.ids.slot.clear_widgets()
        card.ids.slot.add_widget(self._actions(card))

    def resubmit(self, editor: RejectionEditor) -> None:
        """Save the corrected field; a still-invalid value is explained and nothing is saved."""
        card = editor.card
        store = self.app.session.store
        item = self._items.get(f"rejection:{card.seq}")
        if store is None or item is None or not item.field:
            return
        try:
            if editor.has_choices:
                if not editor.choice:
                    self._edit_error(editor, "review.pick")
                    return
                value: Any = editor.choice
            else:
                value = parse_input(store, item.collection, item.field, editor.ids.value.text)
            resubmit_rejection(store, card.seq, {item.field: value})
        except fieldsync.ValidationError as exc:
            field, problem = exc.field, exc.problem
            self._edit_error(editor, "review.invalid", field=lambda: self._field(field),
                             problem=lambda: self._problem(problem))
            return
        except StopIteration:
            self._finish("review.gone", ok=False)
            return
        except fieldsync.FieldsyncError as exc:
            self._edit_error(editor, "review.failed", message=str(exc))
            return
        self._finish("review.done.resubmitted")

    def dismiss(self, card: RejectionCard) -> None:
        store = self.app.session.store
        if store is None:
            return
        dismiss_rejection(store, card.seq)
        self._finish("review.done.dismissed")

    # -- conflicts ------------------------------------------------------------------
    def keep(self, card: ConflictCard) -> None:
        self._resolve(card, keep_conflict, "review.done.kept")

    def restore(self, card: ConflictCard) -> None:
        self._resolve(card, restore_conflict, "review.done.restored")

    def _resolve(self, card: ConflictCard, action: Any, done: str) -> None:
        store = self.app.session.store
        if store is None:
            return
        try:
            action(store, card.conflict_id)
        except fieldsync.RecordNotFound:
            self._finish("review.gone", ok=False)
            return
        except fieldsync.ValidationError as exc:
            field, problem = exc.field, exc.problem
            self._say("review.invalid", ok=False, field=lambda: self._field(field),
                      problem=lambda: self._problem(problem))
            return
        except fieldsync.FieldsyncError as exc:
            self._say("review.failed", ok=False, message=str(exc))
            return
        self._finish(done)

    # -- after an action ------------------------------------------------------------
    def _finish(self, key: str, ok: bool = True) -> None:
        self._editing = None
        self._draft = ""
        self._edit_said = None
        app = self.app
        store = app.session.store
        if store is not None:
            rejections, conflicts = open_counts(store)
            app.status = replace(app.status, rejections=rejections, conflicts=conflicts)
        self._say(key, ok)
        app.saved()
        self.refresh()
