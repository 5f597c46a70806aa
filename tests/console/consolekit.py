"""A console user over HTTP, for the console tests."""

from __future__ import annotations

import re
from typing import Any

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


class ConsoleSession:
    """A console user over HTTP (requests against a live server, or Starlette's TestClient)."""

    def __init__(self, client: Any, base: str = "") -> None:
        self.client = client
        self.base = base

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(self.base + path, **kw)

    def post(self, path: str, data: dict[str, str], csrf_from: str | None = None, **kw: Any) -> Any:
        if csrf_from is not None:
            data = {**data, "csrf": csrf_of(self.get(csrf_from).text)}
        return self.client.post(self.base + path, data=data, **kw)

    def sign_in(self, user: str, password: str) -> Any:
        return self.post("/console/login", {"user": user, "password": password}, csrf_from="/console/login")
