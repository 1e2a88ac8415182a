"""A direct decoder of the TH1/TH2/TProfile layouts ROOT and uproot write: the merge's fast path.

uproot builds its full object model for every histogram (every member of every base
class, through generic streamer machinery), which costs about half a millisecond per
histogram; a merge of hundreds of files of fifty histograms spends nearly all its time
there. This module reads the file once, walks the directories' key lists, decompresses
each histogram's record and picks out only what a ``Hist`` holds, skipping the rest by
the byte counts ROOT writes before every versioned object.

It knows exactly the class versions it was checked against (ROOT 6 and uproot 5: TH1 v8,
TAxis v10, TH1x v3, TH2 v5, TH2x v4, TProfile v7). Anything else -- another version,
bin labels, a compression it cannot undo -- is reported back in ``FastFile.fallback``
and ``histogram.read_file`` reads those objects with uproot, so the result never depends
on which path read it (tests compare both on every kind of file).
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.block
import numpy as np

from runwatch.dqm.histogram import (
    SUPPORTED_CLASSES,
    Axis,
    FloatArray,
    Hist,
    family_of,
    regrid,
)

KNOWN_VERSIONS = {"TH1": 8, "TAxis": 10, "TH1x": 3, "TH2": 5, "TH2x": 4, "TProfile": 7}
BYTECOUNT_FLAG = 0x40000000
IS_REFERENCED = 1 << 4
ARRAY_TYPES = {"C": ">i1", "S": ">i2", "I": ">i4", "F": ">f4", "D": ">f8"}
DIRECTORY_CLASSES = frozenset({"TDirectory", "TDirectoryFile"})


class Unsupported(Exception):
    """This object's layout is not one the decoder knows; uproot reads it instead."""


@dataclass
class FastFile:
    """What the fast path decoded from one file, and what it left to uproot."""

    hists: dict[str, Hist] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)  # TObjString by path (the meta)
    fallback: dict[str, str] = field(default_factory=dict)  # path -> class name
    skipped: dict[str, str] = field(default_factory=dict)  # path -> class name


@dataclass(frozen=True)
class Key:
    """One TKey header: where an object's record lies and what it is."""

    path: str
    classname: str
    cycle: int
    seek: int
    keylen: int
    nbytes: int
    objlen: int


class Reader:
    """A big-endian cursor over one decompressed object record."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def one(self, fmt: str) -> Any:
        return self.unpack(fmt)[0]

    def string(self) -> str:
        length = self.one(">B")
        if length == 255:
            length = self.one(">i")
        text = bytes(self.data[self.pos : self.pos + length]).decode("utf-8", "replace")
        self.pos += length
        return text

    def header(self, name: str | None = None) -> int:
        """Read a versioned object's byte count and version; return the object's end."""
        start = self.pos
        count = self.one(">I")
        if not count & BYTECOUNT_FLAG:
            raise Unsupported("an object without a byte count")
        version = self.one(">h")
        if name is not None and version != KNOWN_VERSIONS[name]:
            raise Unsupported(f"{name} version {version}")
        return start + 4 + int(count & ~BYTECOUNT_FLAG)

    def skip_object(self) -> None:
        self.pos = self.header()

    def tobject(self) -> None:
        version = self.one(">h")
        if version & 0x4000:
            self.pos += 4
        _, bits = self.unpack(">II")
        if bits & IS_REFERENCED:
            self.pos += 2

    def tnamed(self) -> tuple[str, str]:
        end = self.header()
        self.tobject()
        name, title = self.string(), self.string()
        self.pos = end
        return name, title

    def array(self, dtype: str = ">f8") -> FloatArray:
        """A TArray: its length, then its values, as float64 in native byte order."""
        n = self.one(">i")
        values = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.pos)
        self.pos += n * values.itemsize
        return values.astype(np.float64)


def _axis(r: Reader) -> Axis:
    end = r.header("TAxis")
    _, title = r.tnamed()
    r.skip_object()  # TAttAxis: drawing attributes
    nbins, low, high = r.unpack(">idd")
    edges = r.array()
    r.pos += 4 + 4 + 2 + 1  # fFirst, fLast, fBits2, fTimeDisplay
    r.string()  # fTimeFormat
    if r.one(">I") != 0:
        raise Unsupported("bin labels")  # a THashList: uproot decodes it
    r.pos = end
    if len(edges) != nbins + 1:
        edges = np.linspace(low, high, nbins + 1)
    return Axis(edges, title)


@dataclass
class _TH1:
    name: str
    title: str
    axes: tuple[Axis, Axis]
    entries: float
    stats: dict[str, float]
    sumw2: FloatArray


def _th1(r: Reader) -> _TH1:
    end = r.header("TH1")
    name, title = r.tnamed()
    for _ in range(3):
        r.skip_object()  # TAttLine, TAttFill, TAttMarker
    r.pos += 4  # fNcells
    xaxis, yaxis = _axis(r), _axis(r)
    r.skip_object()  # fZaxis
    r.pos += 4  # fBarOffset, fBarWidth
    entries, *sums = r.unpack(">5d")
    r.pos += 3 * 8  # fMaximum, fMinimum, fNormFactor
    r.array()  # fContour
    sumw2 = r.array()
    r.pos = end  # fOption, fFunctions, fBuffer...: nothing a merge needs
    stats = dict(zip(("fTsumw", "fTsumw2", "fTsumwx", "fTsumwx2"), sums, strict=True))
    return _TH1(name, title, (xaxis, yaxis), entries, stats, sumw2)


def decode(classname: str, data: bytes | memoryview) -> Hist:
    """The ``Hist`` in one decompressed TH1x/TH2x/TProfile record; ``Unsupported`` if not known."""
    r = Reader(data)
    family = family_of(classname)
    if family == "TH1":
        end = r.header("TH1x")
        h = _th1(r)
        content = r.array(ARRAY_TYPES[classname[-1]])
        return _plain(classname, h, (h.axes[0],), content, r.pos == end)
    if family == "TH2":
        end = r.header("TH2x")
        th2_end = r.header("TH2")
        h = _th1(r)
        _, *sums = r.unpack(">4d")  # fScalefactor, then the y sums
        h.stats.update(zip(("fTsumwy", "fTsumwy2", "fTsumwxy"), sums, strict=True))
        r.pos = th2_end
        content = r.array(ARRAY_TYPES[classname[-1]])
        return _plain(classname, h, h.axes, content, r.pos == end)
    end = r.header("TProfile")
    r.header("TH1x")
    h = _th1(r)
    sumwy = r.array()
    bin_entries = r.array()
    r.pos += 4 + 8 + 8  # fErrorMode, fYmin, fYmax
    h.stats["fTsumwy"], h.stats["fTsumwy2"] = r.unpack(">2d")
    bin_sumw2 = r.array()
    if r.pos != end:
        raise Unsupported("TProfile record of unexpected length")
    squares = bin_sumw2 if len(bin_sumw2) else bin_entries.copy()
    sumwy2 = h.sumw2 if len(h.sumw2) else np.zeros_like(sumwy)
    axes = (h.axes[0],)
    return Hist(
        h.name, h.title, classname, axes, bin_entries, squares, h.entries, h.stats, sumwy, sumwy2
    )


def _plain(
    classname: str, h: _TH1, axes: tuple[Axis, ...], content: FloatArray, complete: bool
) -> Hist:
    if not complete:
        raise Unsupported(f"{classname} record of unexpected length")
    # Without fSumw2 ROOT takes the errors from the contents: unweighted fills.
    squares = h.sumw2 if len(h.sumw2) else content.copy()
    return Hist(
        h.name,
        h.title,
        classname,
        axes,
        regrid(content, axes),
        regrid(squares, axes),
        h.entries,
        h.stats,
    )


def _decompress(block: memoryview, objlen: int) -> bytes | memoryview:
    """An object record as ROOT compressed it: a series of blocks with 9-byte headers."""
    if len(block) == objlen:
        return block
    out: list[bytes] = []
    pos = 0
    while pos < len(block):
        algo = bytes(block[pos : pos + 2])
        csize = int.from_bytes(block[pos + 3 : pos + 6], "little")
        usize = int.from_bytes(block[pos + 6 : pos + 9], "little")
        data = block[pos + 9 : pos + 9 + csize]
        if algo == b"ZL":
            out.append(zlib.decompress(data))
        elif algo == b"L4":  # an 8-byte xxhash checksum, then the LZ4 block
            out.append(lz4.block.decompress(data[8:], uncompressed_size=usize))
        elif algo == b"XZ":
            out.append(lzma.decompress(data))
        else:
            raise Unsupported(f"compression {algo!r}")
        pos += 9 + csize
    record = b"".join(out)
    if len(record) != objlen:
        raise ValueError(f"record decompressed to {len(record)} bytes, expected {objlen}")
    return record


def _keys_at(data: memoryview, seek_keys: int, prefix: str) -> list[Key]:
    """The TKey headers of one directory's key list (the list's own key comes first)."""
    r = Reader(data, seek_keys)
    _key_header(r, prefix)
    count = r.one(">i")
    return [_key_header(r, prefix) for _ in range(count)]


def _key_header(r: Reader, prefix: str) -> Key:
    start = r.pos
    nbytes, version, objlen, _, keylen, cycle = r.unpack(">ihiIhh")
    seek = r.one(">q" if version > 1000 else ">i")
    r.pos += 8 if version > 1000 else 4  # fSeekPdir
    classname = r.string()
    name = r.string()
    r.string()  # title
    if r.pos - start > keylen:
        raise ValueError("a key header longer than its fKeylen")
    return Key(prefix + name, classname, cycle, seek, keylen, nbytes, objlen)


def _seek_keys(data: memoryview, pos: int) -> int:
    """fSeekKeys of the TDirectory record at ``pos``."""
    r = Reader(data, pos)
    version = r.one(">h")
    r.pos += 4 + 4 + 4 + 4  # fDatimeC, fDatimeM, fNbytesKeys, fNbytesName
    if version > 1000:
        return int(r.unpack(">qqq")[2])
    return int(r.unpack(">iii")[2])


def _all_keys(data: memoryview) -> list[Key]:
    """Every key in the file, sub-directories walked, highest cycle of each path only."""
    if bytes(data[:4]) != b"root":
        raise ValueError("not a ROOT file (no 'root' magic)")
    version, begin = struct.unpack_from(">ii", data, 4)
    end = struct.unpack_from(">q" if version >= 1000000 else ">i", data, 12)[0]
    if len(data) < end:
        raise ValueError(f"truncated: {len(data)} bytes, its header says {end}")
    nbytes_name = struct.unpack_from(">i", data, 36 if version >= 1000000 else 28)[0]
    pending = [(_seek_keys(data, begin + nbytes_name), "")]
    best: dict[str, Key] = {}
    while pending:
        seek_keys, prefix = pending.pop()
        for key in _keys_at(data, seek_keys, prefix):
            if key.classname in DIRECTORY_CLASSES:
                pending.append((_seek_keys(data, key.seek + key.keylen), key.path + "/"))
            elif key.path not in best or key.cycle > best[key.path].cycle:
                best[key.path] = key
    return list(best.values())


def read_fast(path: str | Path, meta_key: str, wanted: set[str] | None = None) -> FastFile:
    """Decode every histogram of a file it can (of ``wanted``, if given); list the rest.

    Raises ``ValueError``/``struct.error``/decompression errors on a damaged file; the
    caller reads such a file with uproot, which then says what is wrong.
    """
    data = memoryview(Path(path).read_bytes())
    result = FastFile()
    for key in _all_keys(data):
        start = key.seek + key.keylen
        block = data[start : key.seek + key.nbytes]
        if len(block) != key.nbytes - key.keylen:
            raise ValueError(f"{key.path}: record runs past the end of the file")
        if key.classname in SUPPORTED_CLASSES:
            if wanted is not None and key.path not in wanted:
                continue
            try:
                result.hists[key.path] = decode(key.classname, _decompress(block, key.objlen))
            except Unsupported:
                result.fallback[key.path] = key.classname
        elif key.path == meta_key and key.classname == "TObjString":
            result.strings[key.path] = _objstring(_decompress(block, key.objlen))
        else:
            result.skipped[key.path] = key.classname
    return result


def _objstring(data: bytes | memoryview) -> str:
    r = Reader(data)
    r.header()
    r.tobject()
    return r.string()
