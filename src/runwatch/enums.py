"""Storing Python enums as short strings with a named CHECK constraint, on every database."""

from __future__ import annotations

import enum

import sqlalchemy as sa


def enum_column_type(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        values_callable=lambda cls: [member.value for member in cls],
        validate_strings=True,
    )
