"""The file-ready message schema: what is accepted, and the precise reason for what is not."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from runwatch.ingest.schema import MessageError, parse_message


def good(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": "RUN.1234.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.001_J25.5.0.rtraw",
        "url": "root://eos.juno//raw/1234/file.rtraw",
        "run": 1234,
        "stream": "Physics",
        "sequence": 1,
        "size": 5_000_000_000,
        "adler32": "0A1B2C3D",
        "created": "2025-08-26T14:00:00+02:00",
        "end_of_run": True,
        "metadata": {"trigger": "global_trigger"},
    }
    message.update(changes)
    return message


def reason(body: str | bytes) -> str:
    with pytest.raises(MessageError) as caught:
        parse_message(body)
    return caught.value.reason


def test_a_full_message_is_parsed_and_normalised() -> None:
    msg = parse_message(json.dumps(good()).encode())
    assert msg.run == 1234
    assert msg.adler32 == "0a1b2c3d"
    assert msg.created == dt.datetime(2025, 8, 26, 12, tzinfo=dt.UTC)
    assert msg.end_of_run is True
    assert msg.metadata == {"trigger": "global_trigger"}


def test_optional_fields_default() -> None:
    body = {k: v for k, v in good().items() if k in ("name", "url", "run", "stream")}
    msg = parse_message(json.dumps(body))
    assert (msg.sequence, msg.size, msg.adler32, msg.created) == (None, None, None, None)
    assert msg.end_of_run is False
    assert msg.metadata == {}


def test_a_short_checksum_is_zero_padded() -> None:
    assert parse_message(json.dumps(good(adler32="1b2c3d"))).adler32 == "001b2c3d"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "not JSON: Expecting value at line 1 column 1"),
        ('{"name": "a",', "not JSON: Expecting property name enclosed in double quotes"),
        (b"\xff\xfe", "not UTF-8: byte 0 cannot be decoded"),
        ("[1, 2]", "a message must be a JSON object, not a list"),
        ('{"run": 1, "run": 2}', "not JSON: duplicate key 'run'"),
        ('{"size": NaN}', "not JSON: NaN is not allowed in JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object(body: str | bytes, expected: str) -> None:
    assert reason(body).startswith(expected)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"run": 0}, "field 'run': must be a positive integer"),
        ({"run": "1234"}, "field 'run': must be a positive integer"),
        ({"run": True}, "field 'run': must be a positive integer"),
        ({"sequence": -1}, "field 'sequence': must be a positive integer"),
        ({"size": 1.5}, "field 'size': must be a non-negative integer"),
        ({"adler32": "xyz"}, "field 'adler32': not 8 hexadecimal digits: 'xyz'"),
        ({"adler32": 1234}, "field 'adler32': must be a string of 8 hexadecimal digits"),
        ({"url": "ftp://host/f"}, "field 'url': scheme must be one of file://, root://"),
        ({"name": "a/b.rtraw"}, "field 'name': must be a file name, not a path"),
        ({"name": ""}, "field 'name': must not be empty"),
        ({"stream": "x" * 65}, "field 'stream': longer than 64 characters"),
        ({"created": "yesterday"}, "field 'created': not an ISO-8601 time: 'yesterday'"),
        ({"created": "2025-08-26T12:00:00"}, "field 'created': has no time zone"),
        ({"end_of_run": "yes"}, "field 'end_of_run': must be true or false, not a string"),
        ({"metadata": []}, "field 'metadata': must be an object, not a list"),
        ({"checksum": "x"}, "unknown field 'checksum' (known: name, url, run"),
    ],
)
def test_each_bad_field_is_named_with_what_is_wrong(changes: dict[str, Any], expected: str) -> None:
    assert reason(json.dumps(good(**changes))).startswith(expected)


def test_missing_fields_are_all_listed() -> None:
    assert reason('{"name": "x.rtraw"}') == (
        "field 'url': required; field 'run': required; field 'stream': required"
    )
