"""File-ready messages made from a raw file's name, for sources that only have the file.

JUNO's DAQ names its raw files ``RUN.<run>.<detector>.<stream>.<ds>.<trigger>.<created>.
<sequence>_<release>.<ext>``; the setting ``ingest.name_pattern`` is a regex whose named
groups ``run``, ``stream``, ``sequence`` and ``created`` (``YYYYmmddHHMMSS``, UTC) give the
message's fields. Every other named group goes into the file's metadata, so another
experiment only needs its own pattern.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from runwatch.storage.checksum import adler32_file

REQUIRED_GROUPS = ("run", "stream")
MESSAGE_GROUPS = ("run", "stream", "sequence", "created")


class FileNameError(ValueError):
    """A file name that the name pattern does not describe."""


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FileNameError(f"the name pattern is not a valid regex: {exc}") from None
    missing = [g for g in REQUIRED_GROUPS if g not in regex.groupindex]
    if missing:
        raise FileNameError(f"the name pattern has no named group {', '.join(missing)}")
    return regex


def message_from_name(name: str, pattern: str) -> dict[str, Any]:
    """The message fields a file name carries (no url, size or checksum).

    ``created`` is returned as an ISO-8601 string so that the result is a JSON message.
    """
    regex = _compile(pattern)
    match = regex.fullmatch(name)
    if match is None:
        raise FileNameError(f"file name {name!r} does not match the name pattern {pattern!r}")
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    fields: dict[str, Any] = {"name": name, "run": int(groups["run"]), "stream": groups["stream"]}
    if "sequence" in groups:
        fields["sequence"] = int(groups["sequence"])
    if "created" in groups:
        try:
            created = dt.datetime.strptime(groups["created"], "%Y%m%d%H%M%S")
        except ValueError:
            raise FileNameError(
                f"file name {name!r}: {groups['created']!r} is not a time YYYYmmddHHMMSS"
            ) from None
        fields["created"] = created.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")
    fields["metadata"] = {k: v for k, v in groups.items() if k not in MESSAGE_GROUPS}
    return fields


def message_for_file(path: Path, pattern: str) -> dict[str, Any]:
    """A whole message for a local raw file: fields from its name, size, checksum, URL."""
    fields = message_from_name(path.name, pattern)
    fields["url"] = path.resolve().as_uri()
    fields["size"] = path.stat().st_size
    fields["adler32"] = adler32_file(path)
    return fields
