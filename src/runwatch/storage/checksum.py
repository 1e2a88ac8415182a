"""Adler-32, the checksum the transfer system and XRootD/EOS use for raw files."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 4 * 1024 * 1024


def adler32_hex(value: int) -> str:
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_stream(stream: BinaryIO, chunk: int = CHUNK) -> tuple[str, int]:
    """Checksum and size of everything left in ``stream``, read in bounded chunks."""
    value, size = 1, 0
    while block := stream.read(chunk):
        value = zlib.adler32(block, value)
        size += len(block)
    return adler32_hex(value), size


def adler32_file(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return adler32_stream(stream)[0]


def normalise_adler32(text: str) -> str:
    """Accept ``0a1b2c3d``, ``0A1B2C3D`` or a leading-zero-stripped form; return 8 lower hex."""
    cleaned = text.strip().lower()
    if cleaned.startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned or len(cleaned) > 8 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"not an adler32 checksum: {text!r}")
    return cleaned.zfill(8)
