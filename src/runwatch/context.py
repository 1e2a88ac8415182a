"""What a CLI command or daemon opens once at its edge: the settings and the database."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from runwatch.config import Settings, load_settings
from runwatch.db import Database


@dataclass
class Context:
    settings: Settings

    @classmethod
    def load(cls) -> Context:
        return cls(load_settings())

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)
