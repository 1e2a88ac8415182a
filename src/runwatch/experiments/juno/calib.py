"""The calib step: raw hits to calibrated hits with each PMT's gain and time offset.

``npe = adc / gain[pmt_id]`` and ``time_ns = tdc - time_offset[pmt_id]``, hit by hit, on
the flattened hits of a chunk of events: one gather per constant per chunk, no Python
loop over events or hits. Only the raw branches the step needs are read, so a large
waveform branch in the raw file costs nothing. Memory is bounded by the chunk size
whatever the file's size; the output appears only when complete (``rootio.TreeWriter``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from runwatch.experiments.juno import detector, formats, rootio
from runwatch.experiments.juno.constants import PmtConstants, read_constants

RAW_INPUTS = ("event_id", "timestamp_ns", "trigger_type", "pmt_id", "adc", "tdc")
"""The raw branches calib reads; anything else in the raw tree is left on disk."""

STEP_EVENTS = 400
"""Events per chunk for calib and hist: ~8 MB of hits at ~1,700 fired PMTs per event.
Larger chunks cost more, not less: each chunk's arrays are fresh memory, and on this
machine the page faults of 2,000-event chunks took more CPU than the arithmetic (calib
1.5-2x slower per event; 250 to 500 events measured alike). calib writes its output in
baskets of this many events, so hist, reading with the same step, decompresses each
basket once."""

Progress = Callable[[int], None]
"""Called with the number of events of each chunk done (drives a progress bar)."""


@dataclass(frozen=True)
class CalibResult:
    """What one calib run did, for the command to report."""

    events: int
    hits: int


class Calibrator:
    """Applies one set of PMT constants to chunks of raw events.

    The constants are held as float32 (the hits' type) so the per-hit arithmetic stays in
    float32 and the output needs no conversion before it is written.
    """

    def __init__(self, constants: PmtConstants) -> None:
        self.gain = np.ascontiguousarray(constants.gain_adc_per_pe, dtype=np.float32)
        self.offset = np.ascontiguousarray(constants.time_offset_ns, dtype=np.float32)
        self.n_pmt = len(self.gain)

    def apply(self, chunk: ak.Array, source: Path) -> dict[str, Any]:
        """The calibrated chunk: every branch of ``formats.CALIB_BRANCHES``."""
        counts = _hits_per_event(chunk, source)
        pmt = _flat(chunk["pmt_id"], np.int32)
        check_pmt_ids(pmt, self.n_pmt, source)
        npe = _flat(chunk["adc"], np.float32) / self.gain[pmt]
        time_ns = _flat(chunk["tdc"], np.float32) - self.offset[pmt]
        return {
            "event_id": _scalar(chunk["event_id"], np.int64),
            "timestamp_ns": _scalar(chunk["timestamp_ns"], np.int64),
            "trigger_type": _scalar(chunk["trigger_type"], np.int32),
            "pmt_id": rootio.jagged(pmt, counts),
            "npe": rootio.jagged(npe, counts),
            "time_ns": rootio.jagged(time_ns, counts),
        }


def check_pmt_ids(pmt: np.ndarray, n_pmt: int, source: Path) -> None:
    """Raise ``InputFileError`` unless every id in ``pmt`` is one of ``n_pmt`` PMTs."""
    if pmt.size and (pmt.min() < 0 or pmt.max() >= n_pmt):
        bad = pmt[(pmt < 0) | (pmt >= n_pmt)][0]
        raise rootio.InputFileError(f"{source}: pmt_id {bad} is outside 0..{n_pmt - 1}")


def _flat(values: ak.Array, dtype: type[np.generic]) -> np.ndarray:
    return np.asarray(ak.flatten(values, axis=1), dtype=dtype)


def _scalar(values: ak.Array, dtype: type[np.generic]) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _hits_per_event(chunk: ak.Array, source: Path) -> np.ndarray:
    """Hits per event, after checking that ``pmt_id``, ``adc`` and ``tdc`` agree on it."""
    counts = np.asarray(ak.num(chunk["pmt_id"], axis=1))
    for name in ("adc", "tdc"):
        if not np.array_equal(counts, np.asarray(ak.num(chunk[name], axis=1))):
            raise rootio.InputFileError(
                f"{source}: events hold different numbers of pmt_id and {name} values"
            )
    return counts


def calibrated_chunks(
    raw: Path, constants: PmtConstants, step_events: int = STEP_EVENTS
) -> Iterator[dict[str, Any]]:
    """The calibrated events of ``raw``, chunk by chunk (for calib and for tests)."""
    calibrator = Calibrator(constants)
    for chunk in rootio.iterate(raw, formats.RAW_TREE, list(RAW_INPUTS), step_events):
        yield calibrator.apply(chunk, raw)


def run_calib(
    raw: Path,
    output: Path,
    constants_path: Path,
    n_pmt: int = detector.N_PMT,
    step_events: int = STEP_EVENTS,
    progress: Progress | None = None,
) -> CalibResult:
    """Calibrate ``raw`` into ``output`` (the ``calib`` tree) with the constants in a CSV.

    Raises ``ConstantsError`` for unusable constants (before the input is opened) and
    ``rootio.InputFileError`` for an unreadable input; either way no ``output`` appears.
    """
    constants = read_constants(constants_path, n_pmt)
    hits = 0
    with rootio.TreeWriter(output, formats.CALIB_TREE, formats.CALIB_BRANCHES) as writer:
        for chunk in calibrated_chunks(raw, constants, step_events):
            writer.extend(chunk)
            hits += len(chunk["npe"].layout.content)
            if progress:
                progress(len(chunk["event_id"]))
    return CalibResult(events=writer.events, hits=hits)
