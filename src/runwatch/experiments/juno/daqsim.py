"""The JUNO DAQ simulator: a run's raw files, written and announced as the real DAQ would.

``simulate_run(DaqConfig(run=1234, out_dir=dropbox))`` writes ``files`` raw files of
``events_per_file`` events each, named like JUNO's::

    RUN.1234.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.001_J25.5.0.rtraw

(the time is when the file closed, UTC, on the DAQ clock: the last event's time stamp).
Each file is a ``formats.RAW_TREE`` tree streamed in chunks of ``CHUNK_EVENTS``, so memory
does not grow with the file. Once a file is complete it is announced with a file-ready
message (``ingest.schema.FileMessage``): by default a ``<name>.done`` semaphore holding the
JSON message, put beside it in ``out_dir`` (the engine's dropbox) by an atomic rename; or,
with ``post_url``, a POST to ``/api/v1/messages``. The last file of the run says
``end_of_run``.

What only a test may know stays out of the dropbox, in ``truth_dir`` (default
``out_dir/truth``, which the dropbox does not scan): ``<name>.truth.root``
(``formats.TRUTH_TREE``) per file, and ``RUN.<run>.constants.csv``, the true gain and time
offset of every PMT.

Random numbers: the PMTs' true constants and the choice of dead and hot PMTs come from
``seed`` alone -- the detector is the same in every run, so constants found in a Calib run
apply to the Physics runs of the same seed -- and the events of file ``seq`` from
``(seed, run, seq)``. The same configuration writes the same events.

Time stamps follow a Poisson trigger of ``rate_hz`` (JUNO: ~1 kHz) from ``start``. By
default the files are written as fast as the machine allows; with ``real_time`` the
simulator keeps to the wall clock, so a file is announced when its last event has
happened.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runwatch.experiments.juno import detector, formats, physics
from runwatch.experiments.juno.geometry import Geometry, load_geometry
from runwatch.experiments.juno.physics import PmtTruth, RawChunk, TruthChunk
from runwatch.experiments.juno.rootio import TreeWriter
from runwatch.storage.checksum import adler32_file

if TYPE_CHECKING:
    import httpx

DETECTOR = "JUNODAQ"
DATA_STREAM = "ds-2"
RAW_SUFFIX = ".rtraw"
TRUTH_SUFFIX = ".truth.root"
SEMAPHORE_SUFFIX = ".done"
CHUNK_EVENTS = 128
"""Events simulated and written at once: ~150 MB of memory in all; larger chunks are no
faster (their big arrays cost page faults) and need more."""
MESSAGES_PATH = "/api/v1/messages"

STREAM_TRIGGER = {"Calib": 2}
"""Trigger type of each stream's events (anything else: 1, the global trigger)."""
STREAM_MIX: Mapping[str, Mapping[int, float]] = {"Calib": physics.CALIB_MIX}
"""Event mix of each stream (anything else: physics.PHYSICS_MIX)."""


class DaqSimError(RuntimeError):
    """The simulator cannot go on: a bad configuration or a refused announcement."""


@dataclass(frozen=True)
class DaqConfig:
    """One simulated run. ``dead``/``hot``: a number of PMTs or a tuple of PMT ids."""

    run: int
    out_dir: Path
    stream: str = "Physics"
    files: int = 1
    events_per_file: int = 1_000
    rate_hz: float = 1_000.0
    real_time: bool = False
    seed: int = 0
    dead: int | tuple[int, ...] = 0
    hot: int | tuple[int, ...] = 0
    geometry_file: Path | None = None
    release: str = "J25.5.0"
    truth_dir: Path | None = None
    start: dt.datetime | None = None  # default: now
    post_url: str | None = None
    token: str | None = None
    waves: bool = True

    @property
    def truth_folder(self) -> Path:
        return self.truth_dir if self.truth_dir is not None else self.out_dir / "truth"

    @property
    def trigger_type(self) -> int:
        return STREAM_TRIGGER.get(self.stream, 1)

    def check(self) -> None:
        """Raise DaqSimError for values no run can have."""
        problems = []
        if self.run < 1:
            problems.append(f"run must be a positive integer, not {self.run}")
        if self.files < 1 or self.events_per_file < 1:
            problems.append("files and events per file must be at least 1")
        if not self.rate_hz > 0:
            problems.append(f"rate must be positive, not {self.rate_hz} Hz")
        for name, value in (("stream", self.stream), ("release", self.release)):
            if not value or not all(c.isalnum() or c in "._-" for c in value):
                problems.append(f"{name} {value!r} must be letters, digits, '.', '_' or '-'")
        if "." in self.stream:
            problems.append(f"stream {self.stream!r} must not contain '.'")
        if self.post_url is not None and not self.token:
            problems.append("posting messages needs a token")
        if problems:
            raise DaqSimError("; ".join(problems))


@dataclass(frozen=True)
class WrittenFile:
    """A raw file written and announced, with its truth beside it."""

    path: Path
    truth_path: Path
    events: int
    message: dict[str, Any] = field(repr=False)


def raw_file_name(
    run: int, stream: str, trigger_type: int, closed: dt.datetime, sequence: int, release: str
) -> str:
    """JUNO's raw file name; ``closed`` is turned to UTC."""
    trigger = detector.TRIGGER_TYPES[trigger_type]
    stamp = closed.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")
    return (
        f"RUN.{run}.{DETECTOR}.{stream}.{DATA_STREAM}.{trigger}.{stamp}."
        f"{sequence:03d}_{release}{RAW_SUFFIX}"
    )


def constants_path(config: DaqConfig) -> Path:
    """Where the run's true PMT constants are written."""
    return config.truth_folder / f"RUN.{config.run}.constants.csv"


def detector_truth(config: DaqConfig, n_pmt: int) -> PmtTruth:
    """The true PMT constants and dead/hot PMTs of ``config`` (from its seed alone)."""
    rng = np.random.default_rng([config.seed, 1])
    try:
        return physics.make_pmt_truth(rng, n_pmt, dead=config.dead, hot=config.hot)
    except ValueError as exc:
        raise DaqSimError(str(exc)) from None


def simulate_run(
    config: DaqConfig,
    progress: Callable[[int], None] | None = None,
    http: httpx.Client | None = None,
) -> list[WrittenFile]:
    """Write and announce the run's files; ``progress`` is told of each chunk's events.

    ``http`` is the client that posts messages when ``config.post_url`` is set (default:
    a new connection per message).
    """
    config.check()
    geometry = load_geometry(config.geometry_file)
    pmts = detector_truth(config, geometry.n_pmt)
    config.truth_folder.mkdir(parents=True, exist_ok=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    pmts.constants().write(constants_path(config))
    clock = _Clock(config)
    written = []
    for sequence in range(1, config.files + 1):
        file = _write_file(config, geometry, pmts, clock, sequence, progress)
        _announce(config, file.message, file.path, http)
        written.append(file)
    return written


class _Clock:
    """The DAQ clock: Poisson trigger times from the run's start, and the wall clock."""

    def __init__(self, config: DaqConfig) -> None:
        start = config.start or dt.datetime.now(dt.UTC)
        self.start_ns = _to_ns(start)
        self.last_ns = self.start_ns
        self.rate_hz = config.rate_hz
        self.real_time = config.real_time
        self.wall_start = time.monotonic()

    def next_times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        gaps = rng.exponential(1e9 / self.rate_hz, n)
        times = self.last_ns + np.cumsum(np.maximum(gaps, 1.0)).astype(np.int64)
        self.last_ns = int(times[-1])
        return times

    def wait_for(self, ns: int) -> None:
        """In real time, sleep until the event at ``ns`` has happened."""
        if self.real_time:
            due = self.wall_start + (ns - self.start_ns) * 1e-9
            time.sleep(max(0.0, due - time.monotonic()))


def _write_file(
    config: DaqConfig,
    geometry: Geometry,
    pmts: PmtTruth,
    clock: _Clock,
    sequence: int,
    progress: Callable[[int], None] | None,
) -> WrittenFile:
    rng = np.random.default_rng([config.seed, 2, config.run, sequence])
    first_id = (sequence - 1) * config.events_per_file
    # The name holds the closing time, known only at the end: write under a provisional
    # name (TreeWriter adds .part until closed), then rename.
    provisional = config.out_dir / f".RUN.{config.run}.{sequence:03d}.writing{RAW_SUFFIX}"
    provisional_truth = config.truth_folder / f"{provisional.name}{TRUTH_SUFFIX}"
    chunk_events = _chunk_events(config)
    first_ns = None
    with (
        TreeWriter(provisional, formats.RAW_TREE, formats.RAW_BRANCHES) as raw_out,
        TreeWriter(provisional_truth, formats.TRUTH_TREE, formats.TRUTH_BRANCHES) as truth_out,
    ):
        for start in range(0, config.events_per_file, chunk_events):
            n = min(chunk_events, config.events_per_file - start)
            raw, truth = _simulate(config, geometry, pmts, clock, rng, n, first_id + start)
            first_ns = int(raw.timestamp_ns[0]) if first_ns is None else first_ns
            raw_out.extend(raw.branches())
            truth_out.extend(truth.branches())
            clock.wait_for(int(raw.timestamp_ns[-1]))
            if progress is not None:
                progress(n)
    closed = _from_ns(clock.last_ns)
    name = raw_file_name(
        config.run, config.stream, config.trigger_type, closed, sequence, config.release
    )
    path = config.out_dir / name
    truth_path = config.truth_folder / f"{name}{TRUTH_SUFFIX}"
    os.replace(provisional_truth, truth_path)
    os.replace(provisional, path)
    assert first_ns is not None  # events_per_file >= 1
    message = file_message(config, path, sequence, first_id, first_ns, clock.last_ns)
    return WrittenFile(path, truth_path, config.events_per_file, message)


def _chunk_events(config: DaqConfig) -> int:
    if config.real_time:
        # a tenth of a second of data at a time, so that the pace is smooth
        return max(1, min(CHUNK_EVENTS, int(config.rate_hz / 10)))
    return CHUNK_EVENTS


def _simulate(
    config: DaqConfig,
    geometry: Geometry,
    pmts: PmtTruth,
    clock: _Clock,
    rng: np.random.Generator,
    n: int,
    first_id: int,
) -> tuple[RawChunk, TruthChunk]:
    return physics.simulate_chunk(
        rng,
        geometry,
        pmts,
        n,
        first_id,
        mix=STREAM_MIX.get(config.stream, physics.PHYSICS_MIX),
        timestamps_ns=clock.next_times(rng, n),
        trigger_type=config.trigger_type,
        waves=config.waves,
    )


def file_message(
    config: DaqConfig, path: Path, sequence: int, first_id: int, first_ns: int, last_ns: int
) -> dict[str, Any]:
    """The file-ready message of a complete raw file (``ingest.schema.FileMessage``)."""
    return {
        "name": path.name,
        "url": path.resolve().as_uri(),
        "run": config.run,
        "stream": config.stream,
        "sequence": sequence,
        "size": path.stat().st_size,
        "adler32": adler32_file(path),
        "created": _iso(last_ns),
        "end_of_run": sequence == config.files,
        "metadata": {
            "detector": DETECTOR,
            "ds": DATA_STREAM,
            "trigger": detector.TRIGGER_TYPES[config.trigger_type],
            "release": config.release,
            "events": config.events_per_file,
            "first_event_id": first_id,
            "last_event_id": first_id + config.events_per_file - 1,
            "first_event_time": _iso(first_ns),
            "last_event_time": _iso(last_ns),
            "simulated": True,
            "seed": config.seed,
        },
    }


def _announce(
    config: DaqConfig, message: dict[str, Any], path: Path, http: httpx.Client | None
) -> None:
    if config.post_url is not None:
        post_message(config.post_url, config.token or "", message, http)
    else:
        write_semaphore(path, message)


def write_semaphore(path: Path, message: Mapping[str, Any]) -> Path:
    """Put ``<path>.done`` holding ``message`` beside ``path``, all at once.

    Written under a name the dropbox ignores, then renamed: the dropbox never reads a
    half-written semaphore.
    """
    semaphore = path.with_name(path.name + SEMAPHORE_SUFFIX)
    partial = path.with_name(f".{path.name}.semaphore.tmp")
    partial.write_text(json.dumps(message, indent=1) + "\n")
    os.replace(partial, semaphore)
    return semaphore


def post_message(
    url: str, token: str, message: Mapping[str, Any], http: httpx.Client | None = None
) -> None:
    """POST ``message`` to the engine's HTTP intake at ``url`` (its base or full address)."""
    import httpx  # only the HTTP announcement needs it

    target = url if url.rstrip("/").endswith(MESSAGES_PATH) else url.rstrip("/") + MESSAGES_PATH
    headers = {"Authorization": f"Bearer {token}"}
    try:
        if http is None:
            response = httpx.post(target, json=message, headers=headers, timeout=30)
        else:
            response = http.post(target, json=message, headers=headers)
    except httpx.HTTPError as exc:
        raise DaqSimError(f"cannot post {message['name']} to {target}: {exc}") from exc
    if response.status_code != 200:
        raise DaqSimError(
            f"{target} refused {message['name']} ({response.status_code}): {response.text[:500]}"
        )


def parse_ids(text: str) -> tuple[int, ...]:
    """``"3,17,250"`` as PMT ids (for the command line)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DaqSimError(f"not a comma-separated list of PMT ids: {text!r}") from None


def pmt_choice(count: int, ids: Sequence[int] | None) -> int | tuple[int, ...]:
    """A DaqConfig ``dead``/``hot`` value from a count or explicit ids (ids win)."""
    return tuple(ids) if ids else count


def _to_ns(when: dt.datetime) -> int:
    if when.tzinfo is None:
        raise DaqSimError(f"the run's start {when.isoformat()} has no time zone")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    delta = when - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC)


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    when = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=rest // 1000)
    return when.isoformat().replace("+00:00", "Z")
