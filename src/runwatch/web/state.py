"""What every route reads from the app: the settings and the database ``create_app`` was
given (on ``app.state``), typed, so that each route asks for them the same way."""

from __future__ import annotations

from fastapi import Request

from runwatch.config import Settings
from runwatch.db import Database


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db
