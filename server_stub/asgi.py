"""ASGI entry point for uvicorn workers: the database URL comes from FIELDSYNC_DB."""

from __future__ import annotations

import os

from .app import create_app
from .district import District

app = create_app(District(os.environ.get("FIELDSYNC_DB", "sqlite:///district.db")))
