"""Unlock with the PIN: wrong-PIN delay and the erase warning shown plainly."""

from __future__ import annotations

import math

from kivy.properties import StringProperty

import fieldsync

from .base import FieldScreen

__all__ = ["UnlockScreen"]


class UnlockScreen(FieldScreen):
    show_nav = False
    hint = StringProperty("")

    def prepare(self, **params: object) -> None:
        self.message = ""
        self.ids.pin.text = ""

    def unlock(self) -> None:
        pin = self.ids.pin.text
        self.ids.pin.text = ""
        try:
            self.app.session.unlock(pin)
        except fieldsync.WrongPinError as exc:
            self.message = self.t("unlock.wrong", left=exc.attempts_left)
            if exc.retry_after:
                self.message += "\n" + self.t("unlock.wait", seconds=math.ceil(exc.retry_after))
            return
        except fieldsync.PinLockedError as exc:
            self.message = self.t("unlock.wait", seconds=math.ceil(exc.retry_after))
            return
        except fieldsync.StoreErasedError:
            self.message = self.t("unlock.erased")
            return
        except fieldsync.AuthError:
            self.message = self.t("unlock.wrong", left="?")
            return
        self.message = ""
        self.app.unlocked()
