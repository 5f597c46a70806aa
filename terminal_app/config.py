"""The app's settings file: where the store is, the server, language, timeouts.

Nothing personal is kept here (the store holds all personal data,
encrypted); the file is plain JSON in the app's data folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["AppConfig"]


@dataclass
class AppConfig:
    data_dir: str
    server_url: str = ""
    language: str = "zh"
    lock_timeout_s: int = 300
    sync_interval_s: int = 300
    probe_interval_s: int = 20
    font_path: str = ""
    ca_bundle: str = ""
    allow_insecure_http: bool = False  # only for a trusted test network; loopback is always allowed
    prefetch_photos_on_wifi: bool = False  # after a sync, fetch missing report photos when not metered
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir) / "tablet.fsdb"

    @property
    def file(self) -> Path:
        return Path(self.data_dir) / "settings.json"

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str]) -> "AppConfig":
        """Read the settings in ``data_dir`` (defaults where the file or a key is missing)."""
        path = Path(data_dir) / "settings.json"
        known = {f.name for f in fields(cls)} - {"data_dir"}
        values = {}
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raw = {}
            values = {k: v for k, v in raw.items() if k in known} if isinstance(raw, dict) else {}
        return cls(data_dir=str(data_dir), **values)

    def save(self) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "data_dir"}
        tmp = self.file.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file)
