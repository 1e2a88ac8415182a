"""Messages made from JUNO raw file names."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from runwatch.config import IngestSettings
from runwatch.ingest.names import FileNameError, message_for_file, message_from_name
from runwatch.ingest.schema import validate_message

PATTERN = IngestSettings().name_pattern
NAME = "RUN.1234.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.001_J25.5.0.rtraw"


def test_fields_come_from_the_name() -> None:
    assert message_from_name(NAME, PATTERN) == {
        "name": NAME,
        "run": 1234,
        "stream": "Physics",
        "sequence": 1,
        "created": "2025-08-26T12:00:00Z",
        "metadata": {
            "detector": "JUNODAQ",
            "ds": "ds-2",
            "trigger": "global_trigger",
            "release": "J25.5.0",
            "ext": "rtraw",
        },
    }


def test_a_name_that_does_not_match_says_so() -> None:
    with pytest.raises(FileNameError, match=r"file name 'calib\.root' does not match"):
        message_from_name("calib.root", PATTERN)


def test_an_impossible_time_in_the_name_is_an_error() -> None:
    bad = NAME.replace("20250826120000", "20251341120000")
    with pytest.raises(FileNameError, match="'20251341120000' is not a time YYYYmmddHHMMSS"):
        message_from_name(bad, PATTERN)


def test_a_pattern_without_the_run_group_is_an_error() -> None:
    with pytest.raises(FileNameError, match="has no named group run"):
        message_from_name("x", r"(?P<stream>\w+)")


def test_another_experiments_pattern_needs_only_run_and_stream() -> None:
    fields = message_from_name("r42_Cosmics.dat", r"r(?P<run>\d+)_(?P<stream>\w+)\.dat")
    assert fields == {"name": "r42_Cosmics.dat", "run": 42, "stream": "Cosmics", "metadata": {}}


def test_a_whole_message_for_a_local_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / NAME
    path.write_bytes(b"raw bytes")
    fields = message_for_file(path, PATTERN)
    assert fields["size"] == 9
    assert fields["adler32"] == f"{zlib.adler32(b'raw bytes'):08x}"
    assert fields["url"] == path.as_uri()
    assert validate_message(fields).sequence == 1
