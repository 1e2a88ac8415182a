"""The rec step: calibrated hits to vertex, time and energy, one entry per selected event.

The input is read chunk by chunk (``rootio.iterate``), so memory is bounded by the chunk
size and the threads in flight, whatever the file's size. Each chunk is sampled, checked,
flattened and fitted (``vertexfit.Reconstructor``) in a thread pool: NumPy releases the
GIL in its array operations, so chunks fit in parallel, and the results are written in
the input's order, so the output does not depend on the number of threads.

Sampling is deterministic: an event is kept when ``splitmix64(event_id)`` falls below
``fraction`` of the 64-bit range, so a rerun, another chunk size or another thread count
keeps the same events, and events that are not kept cost no fitting at all.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from runwatch.experiments.juno import formats, rootio
from runwatch.experiments.juno.geometry import load_geometry
from runwatch.experiments.juno.unusable import unusable_pmts
from runwatch.experiments.juno.vertexfit import Hits, Reconstructor

HIT_BRANCHES = ("pmt_id", "npe", "time_ns")


@dataclass(frozen=True)
class RecResult:
    """What one rec run did, for the command to report."""

    events: int  # read from the input
    selected: int  # kept by the sampling (and written)
    fitted: int  # selected with fit_ok
    seconds: float  # wall clock: reading, fitting and writing
    cpu_seconds: float  # CPU of all the process's threads over the same span
    setup_seconds: float  # loading the geometry and tabulating the models, once

    @property
    def events_per_second(self) -> float:
        """Input events handled per wall-clock second (sampled-out ones included)."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_cpu_second(self) -> float:
        """Input events per CPU-second: the rate per core, steadier than the wall rate
        on a shared machine."""
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of each value: a well-mixed 64-bit hash (uint64)."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_mask(event_id: np.ndarray, fraction: float) -> np.ndarray:
    """Which events a ``fraction`` sample keeps: a pure function of each event's id."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the sample fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.ones(len(event_id), dtype=bool)
    # The top 53 bits as a uniform number in [0, 1): exact in a float64.
    uniform = (splitmix64(np.asarray(event_id)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniform < fraction


def reconstruct_chunk(
    reconstructor: Reconstructor, chunk: ak.Array, fraction: float, source: Path
) -> dict[str, np.ndarray]:
    """The ``formats.REC_BRANCHES`` of the chunk's events that the sampling keeps.

    Dead and hot PMTs are found in all the chunk's events (``unusable``), before the
    sampling, so that they do not depend on the sample fraction.
    """
    hits = _flat_hits(chunk, reconstructor.n_pmt, source)
    unusable = unusable_pmts(hits.pmt_id, hits.time_ns, len(hits.counts), reconstructor.n_pmt)
    event_id = np.asarray(chunk["event_id"], dtype=np.int64)
    keep = sample_mask(event_id, fraction)
    if not keep.all():
        hits = hits.events(keep)
    fit = reconstructor.fit(hits, unusable)
    return {
        "event_id": event_id[keep],
        "timestamp_ns": np.asarray(chunk["timestamp_ns"], dtype=np.int64)[keep],
        "trigger_type": np.asarray(chunk["trigger_type"], dtype=np.int32)[keep],
        "x_mm": fit.x_mm,
        "y_mm": fit.y_mm,
        "z_mm": fit.z_mm,
        "t0_ns": fit.t0_ns,
        "energy_mev": fit.energy_mev.astype(np.float32),
        "total_pe": fit.total_pe,
        "nhit": fit.nhit,
        "fit_ok": fit.fit_ok,
    }


def _flat_hits(chunk: ak.Array, n_pmt: int, source: Path) -> Hits:
    """The chunk's hits as flat arrays, checked against the geometry."""
    counts = np.asarray(ak.num(chunk["pmt_id"], axis=1), dtype=np.int64)
    for name in HIT_BRANCHES[1:]:
        if not np.array_equal(counts, np.asarray(ak.num(chunk[name], axis=1))):
            raise rootio.InputFileError(
                f"{source}: events hold different numbers of pmt_id and {name} values"
            )
    pmt_id, npe, time_ns = (
        np.asarray(ak.flatten(chunk[name], axis=1), dtype=dtype)
        for name, dtype in zip(HIT_BRANCHES, (np.int32, np.float32, np.float32), strict=True)
    )
    if len(pmt_id) and (pmt_id.min() < 0 or pmt_id.max() >= n_pmt):
        bad = pmt_id[(pmt_id < 0) | (pmt_id >= n_pmt)][0]
        raise rootio.InputFileError(
            f"{source}: pmt_id {bad} is outside the geometry's 0..{n_pmt - 1}"
        )
    return Hits(counts=counts, pmt_id=pmt_id, npe=npe, time_ns=time_ns)


def rec_chunks(
    source: Path,
    reconstructor: Reconstructor,
    fraction: float = 1.0,
    threads: int = 1,
    step_events: int = rootio.DEFAULT_STEP_EVENTS,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(input events, reconstructed selected events) per chunk of ``source``, in order.

    With ``threads`` > 1, chunks are fitted in a pool while the next one is read: memory
    stays bounded by ``threads + 1`` chunks.
    """
    chunks = rootio.iterate(source, formats.CALIB_TREE, list(formats.CALIB_BRANCHES), step_events)
    if threads == 1:
        for chunk in chunks:
            yield len(chunk), reconstruct_chunk(reconstructor, chunk, fraction, source)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rec") as pool:
        pending: deque[tuple[int, Future[dict[str, np.ndarray]]]] = deque()
        try:
            for chunk in chunks:
                job = pool.submit(reconstruct_chunk, reconstructor, chunk, fraction, source)
                pending.append((len(chunk), job))
                while len(pending) > threads:
                    events, done = pending.popleft()
                    yield events, done.result()
            while pending:
                events, done = pending.popleft()
                yield events, done.result()
        finally:
            for _, job in pending:
                job.cancel()


def run_rec(
    source: Path,
    output: Path,
    *,
    geometry: Path | None = None,
    threads: int = 1,
    fraction: float = 1.0,
    step_events: int = rootio.DEFAULT_STEP_EVENTS,
    progress: Callable[[int], Any] | None = None,
) -> RecResult:
    """Reconstruct the selected events of ``source`` into ``output`` (the ``rec`` tree).

    Raises ``GeometryError`` for an unusable geometry file, ``ValueError`` for a bad
    fraction or thread count (both before the input is opened), and
    ``rootio.InputFileError`` for an unreadable input; in every case no ``output`` appears.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    sample_mask(np.zeros(0, dtype=np.int64), fraction)  # validates the fraction
    started = time.perf_counter()
    reconstructor = Reconstructor(load_geometry(geometry).positions)
    ready, ready_cpu = time.perf_counter(), time.process_time()
    events = fitted = 0
    with rootio.TreeWriter(output, formats.REC_TREE, formats.REC_BRANCHES) as writer:
        for chunk_events, rec in rec_chunks(source, reconstructor, fraction, threads, step_events):
            writer.extend(rec)
            events += chunk_events
            fitted += int(rec["fit_ok"].sum())
            if progress is not None:
                progress(chunk_events)
    return RecResult(
        events=events,
        selected=writer.events,
        fitted=fitted,
        seconds=time.perf_counter() - ready,
        cpu_seconds=time.process_time() - ready_cpu,
        setup_seconds=ready - started,
    )
