"""Drive the real app without a person: for the offscreen demo and the UI tests.

:class:`AppDriver` starts a :class:`GridWorkerApp` in this process without
entering Kivy's blocking main loop, pumps frames itself, and acts like a
finger: it taps widgets by dispatching real touch events at their centre
(so buttons, toggles and list rows react exactly as to a person), types into
text inputs and saves screenshots.  It needs a window: with no display, set
``SDL_VIDEODRIVER=offscreen`` before importing Kivy (see :func:`offscreen`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["offscreen", "AppDriver", "DriverError"]


def offscreen(width: int = 720, height: int = 1280, kivy_home: str | None = None, quiet: bool = False) -> None:
    """Configure Kivy for rendering with no display (SDL2's offscreen driver).  Call before importing Kivy.

    ``quiet`` keeps Kivy's start-up chatter (missing clipboard tools and the
    like, harmless offscreen) out of the output; errors still show.
    """
    os.environ["KIVY_NO_ARGS"] = "1"
    if quiet:
        os.environ["KIVY_NO_CONSOLELOG"] = "1"
        os.environ["KIVY_LOG_MODE"] = "KIVY"
    os.environ.setdefault("KIVY_HOME", kivy_home or tempfile.mkdtemp(prefix="kivy-home-"))
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    if not os.environ.get("DISPLAY") or os.environ.get("FIELDSYNC_FORCE_OFFSCREEN"):
        os.environ["SDL_VIDEODRIVER"] = "offscreen"
    from kivy.config import Config

    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("graphics", "resizable", "0")
    Config.set("kivy", "exit_on_escape", "0")
    Config.set("input", "mouse", "mouse,disable_multitouch")


class DriverError(AssertionError):
    """The app did not do what the script expected (the message says what was on screen)."""


def _touch(x: float, y: float) -> Any:
    """A real touch MotionEvent at window position (x, y), as a finger would make."""
    from kivy.core.window import Window
    from kivy.input.motionevent import MotionEvent

    class FingerTouch(MotionEvent):
        def depack(self, args: Any) -> None:
            self.sx = args["x"]
            self.sy = args["y"]
            self.profile = ["pos"]
            super().depack(args)

    _touch.count += 1  # type: ignore[attr-defined]
    return FingerTouch("driver", _touch.count,  # type: ignore[attr-defined]
                       {"x": x / (Window.width - 1.0), "y": y / (Window.height - 1.0)},
                       is_touch=True, type_id="touch")


_touch.count = 0  # type: ignore[attr-defined]


class AppDriver:
    def __init__(self, app: Any) -> None:
        from kivy.base import EventLoop

        self.app = app
        self._loop = EventLoop
        app._run_prepare()
        self.pump(3)

    # -- frames ---------------------------------------------------------------
    def pump(self, frames: int = 2) -> None:
        for _ in range(frames):
            self._loop.idle()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        """Pump frames until ``condition()`` holds (background sync results arrive via the clock)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(1)
            if condition():
                return
            time.sleep(0.02)
        raise DriverError(f"timed out after {timeout:.0f} s waiting for {what}; screen {self.app.manager.current!r}")

    # -- finding widgets ---------------------------------------------------------
    def _walk(self, root: Any) -> Iterator[Any]:
        stack = [root]
        while stack:
            widget = stack.pop()
            yield widget
            stack.extend(widget.children)

    def visible_texts(self) -> list[str]:
        """Every label text drawn on the window now (for assertions and error messages)."""
        from kivy.core.window import Window
        from kivy.uix.label import Label

        return [w.text for w in self._walk(Window) if isinstance(w, Label) and w.text and w.opacity > 0
                and self._on_screen(w)]

    def _on_screen(self, widget: Any) -> bool:
        from kivy.core.window import Window

        x, y = widget.to_window(widget.center_x, widget.center_y)
        if not (0 <= x <= Window.width and 0 <= y <= Window.height):
            return False
        parent = widget
        while parent is not None and parent is not Window:
            if getattr(parent, "disabled", False) or getattr(parent, "opacity", 1) == 0:
                return False
            parent = parent.parent
        return True

    def find(self, text: str | None = None, *, cls: type | None = None, where: Any = None) -> Any:
        """The visible widget whose ``text`` is exactly ``text`` (and of class ``cls``)."""
        from kivy.core.window import Window

        found = [w for w in self._walk(where or Window)
                 if (text is None or getattr(w, "text", None) == text)
                 and (cls is None or isinstance(w, cls)) and self._on_screen(w)]
        if not found:
            raise DriverError(f"no visible widget {text!r} on {self.app.manager.current!r}; "
                              f"visible texts: {self.visible_texts()[:40]}")
        return found[0]

    # -- acting ------------------------------------------------------------------
    def tap(self, target: Any) -> None:
        """Tap a widget (or the visible widget with that text) with a real touch event."""
        from kivy.base import EventLoop

        widget = self.find(target) if isinstance(target, str) else target
        x, y = widget.to_window(widget.center_x, widget.center_y)
        touch = _touch(x, y)
        EventLoop.post_dispatch_input("begin", touch)
        self.pump(1)
        EventLoop.post_dispatch_input("end", touch)
        self.pump(3)

    def type(self, text_input: Any, text: str, submit: bool = False) -> None:
        """Type into a TextInput as a keyboard would (it fires on_text; ``submit`` presses Enter)."""
        text_input.focus = True
        text_input.text = ""
        text_input.insert_text(text)
        if submit:
            text_input.dispatch("on_text_validate")
        text_input.focus = False
        self.pump(2)

    def screenshot(self, path: str | Path) -> Path:
        """Save the window as a PNG at ``path`` (its folder is created)."""
        from kivy.core.window import Window

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pump(3)
        written = Window.screenshot(str(path))
        os.replace(written, path)
        return path

    def close(self) -> None:
        self.app.stop()
        self.pump(1)
