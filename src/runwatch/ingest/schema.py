"""The file-ready message: what the transfer system says when a raw file has arrived.

A message is one JSON object::

    {"name": "RUN.1234....rtraw", "url": "root://eos//juno/raw/...", "run": 1234,
     "stream": "Physics", "sequence": 1, "size": 5000000000, "adler32": "0a1b2c3d",
     "created": "2025-08-26T12:00:00Z", "end_of_run": false, "metadata": {}}

Validation happens here, at the edge, and every failure names the field and what is wrong
with it, because the reason is all an operator has when a rejected message is looked at
days later. Numbers and booleans must be JSON numbers and booleans (no ``"12"`` for 12): a
transfer system that sends strings has a bug worth seeing.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from runwatch.storage.checksum import normalise_adler32

URL_SCHEMES = ("file://", "root://", "https://", "http://")
MAX_NAME = 255  # files.name
MAX_URL = 1024  # files.url
MAX_STREAM = 64  # files.stream, runs.stream
MAX_RUN = 2**63 - 1  # runs.number is a BIGINT


class MessageError(ValueError):
    """A message that cannot be accepted; ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("runwatch", message)


def _plain_text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(f"must be a string, not {_json_kind(value)}")
    if not value.strip():
        raise _fail("must not be empty")
    if len(value) > limit:
        raise _fail(f"longer than {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail("contains control characters")
    return value


def _count(value: Any, minimum: int) -> int:
    words = "a positive integer" if minimum == 1 else "a non-negative integer"
    # bool is an int in Python; JSON true is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(f"must be {words}")
    if value < minimum or value > MAX_RUN:
        raise _fail(f"must be {words}")
    return value


class FileMessage(BaseModel):
    """One file-ready message, validated; ``adler32`` is 8 lower-case hex digits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The file's name, unique across the experiment.")
    url: str = Field(description="Where the file is: file://, root://, https:// or http://.")
    run: int = Field(description="Run number.")
    stream: str = Field(description="Data stream, e.g. Physics; it selects the pipelines.")
    sequence: int | None = Field(None, description="The file's number within its run, from 1.")
    size: int | None = Field(None, description="Size in bytes.")
    adler32: str | None = Field(None, description="Adler-32 checksum, 8 hexadecimal digits.")
    created: dt.datetime | None = Field(None, description="When the DAQ closed the file.")
    end_of_run: bool = Field(False, description="True on the run's last file.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form metadata.")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        name = _plain_text(value, MAX_NAME)
        if "/" in name or "\\" in name:
            raise _fail("must be a file name, not a path")
        return name

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str:
        url = _plain_text(value, MAX_URL)
        if not url.startswith(URL_SCHEMES):
            raise _fail(f"scheme must be one of {', '.join(URL_SCHEMES)}: {url!r}")
        return url

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, value: Any) -> str:
        return _plain_text(value, MAX_STREAM)

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, value: Any) -> int:
        return _count(value, 1)

    @field_validator("sequence", mode="before")
    @classmethod
    def _sequence(cls, value: Any) -> int | None:
        return None if value is None else _count(value, 1)

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else _count(value, 0)

    @field_validator("adler32", mode="before")
    @classmethod
    def _adler32(cls, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _fail(f"must be a string of 8 hexadecimal digits, not {_json_kind(value)}")
        try:
            return normalise_adler32(value)
        except ValueError:
            raise _fail(f"not 8 hexadecimal digits: {value!r}") from None

    @field_validator("created", mode="before")
    @classmethod
    def _created(cls, value: Any) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _fail(f"must be an ISO-8601 time string, not {_json_kind(value)}")
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _fail(f"not an ISO-8601 time: {value!r}") from None
        if when.tzinfo is None:
            # Guessing the zone of a DAQ clock would silently shift runs by hours.
            raise _fail(f"has no time zone (add Z for UTC): {value!r}")
        return when.astimezone(dt.UTC)

    @field_validator("end_of_run", mode="before")
    @classmethod
    def _end_of_run(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(f"must be true or false, not {_json_kind(value)}")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(f"must be an object, not {_json_kind(value)}")
        return value

    def identity(self) -> dict[str, Any]:
        """The fields that say which bytes the file holds and where (for duplicate checks)."""
        return {
            "run": self.run,
            "url": self.url,
            "stream": self.stream,
            "sequence": self.sequence,
            "size": self.size,
            "adler32": self.adler32,
        }


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key given twice would otherwise silently keep its last value.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_json(body: str | bytes) -> Any:
    """Decode a JSON document, raising ``MessageError`` with where it is broken."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"not UTF-8: byte {exc.start} cannot be decoded") from None
    try:
        # NaN and Infinity are Python's extension to JSON; PostgreSQL would refuse them later.
        return json.loads(body, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None


def validate_message(data: Any) -> FileMessage:
    """A decoded JSON value as a ``FileMessage``, or ``MessageError``."""
    if not isinstance(data, dict):
        raise MessageError(f"a message must be a JSON object, not {_json_kind(data)}")
    try:
        return FileMessage.model_validate(data)
    except ValidationError as exc:
        raise MessageError(_reason(exc)) from None


def parse_message(body: str | bytes) -> FileMessage:
    """Parse and validate one message; ``MessageError.reason`` says precisely what is wrong."""
    return validate_message(load_json(body))


def _reason(exc: ValidationError) -> str:
    problems = []
    allowed = ", ".join(FileMessage.model_fields)
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            problems.append(f"field '{field}': required")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unknown field '{field}' (known: {allowed})")
        else:
            problems.append(f"field '{field}': {error['msg']}")
    return "; ".join(problems)
