"""The photo field the report and visit forms share: a chosen file becomes an encrypted attachment."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kivy.clock import mainthread
from kivy.core.image import Image as CoreImage

import fieldsync

from ..services import capture

__all__ = ["PhotoField"]


class PhotoField:
    """Mixed into a form screen that has ``photo_hash`` and ``thumb_texture`` properties and ``changed()``.

    ``locked_message`` names the catalog entry shown when the app locked
    while a photo was being chosen.
    """

    locked_message = "report.locked"

    if TYPE_CHECKING:  # provided by the screen this is mixed into
        photo_hash: str
        message: str

        thumb_texture: Any

        def t(self, key: str, **values: Any) -> str: ...
        def changed(self, *args: Any) -> None: ...

    @mainthread
    def _photo_from_camera(self, path: str | None, owned: bool) -> None:
        self.photo_chosen(path, owned)

    def photo_chosen(self, path: str | None, owned: bool = False) -> None:
        """A photo file was chosen (file chooser or camera): encrypt it into the store and show it.

        Returns nothing; problems are shown in the form's message line.
        """
        if not path:
            return
        store = self.app.session.store  # type: ignore[attr-defined]
        if store is None:
            self.message = self.t(self.locked_message)
            if owned:  # never leave a plaintext camera photo behind
                Path(path).unlink(missing_ok=True)
            return
        try:
            content_hash = capture.store_photo(store, path, owned)
        except capture.PhotoError as exc:
            self.message = self.t(f"report.photo.error.{exc.code}", detail=exc.detail)
            return
        except fieldsync.FieldsyncError as exc:
            self.message = self.t("report.photo.error.store", detail=str(exc))
            return
        previous = self.photo_hash
        self._set_photo(content_hash)
        if previous and previous != content_hash:
            capture.discard_photo(store, previous)
        self.photo_stored()
        self.changed()

    def photo_stored(self) -> None:
        """Hook after a photo was stored (the report form says so)."""

    def photo_shown(self) -> None:
        """Hook after the thumbnail changed (the report form relabels its buttons)."""

    def remove_photo(self) -> None:
        store = self.app.session.store  # type: ignore[attr-defined]
        if store is not None and self.photo_hash:
            capture.discard_photo(store, self.photo_hash)
        self._set_photo("")
        self.changed()

    def _set_photo(self, content_hash: str) -> None:
        """Show ``content_hash``'s thumbnail (made in memory: no plaintext photo on disk), or none."""
        self.photo_hash = content_hash
        self.thumb_texture = None
        store = self.app.session.store  # type: ignore[attr-defined]
        if content_hash and store is not None:
            try:
                small, kind = capture.thumbnail(store.attachments.read(content_hash))
                self.thumb_texture = CoreImage(io.BytesIO(small), ext=kind).texture
            except (fieldsync.RecordNotFound, fieldsync.IntegrityError):
                self.photo_hash = ""
                self.message = self.t("report.photo.error.missing_in_store")
            except capture.PhotoError as exc:
                self.photo_hash = ""
                self.message = self.t(f"report.photo.error.{exc.code}", detail=exc.detail)
        self.photo_shown()
