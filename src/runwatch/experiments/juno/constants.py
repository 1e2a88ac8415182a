"""Per-PMT calibration constants as a CSV file: ``pmt_id,gain_adc_per_pe,time_offset_ns``.

The simulator writes the true constants of a run in this format, so a test can hand them
to the calib step and check the result; a later issue brings them from the conditions
database instead of a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = "pmt_id,gain_adc_per_pe,time_offset_ns"


class ConstantsError(ValueError):
    """A constants file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class PmtConstants:
    """Gain (ADC counts per photo-electron) and time offset (ns) of each PMT, by id."""

    gain_adc_per_pe: np.ndarray
    time_offset_ns: np.ndarray

    def write(self, path: Path) -> None:
        ids = np.arange(len(self.gain_adc_per_pe))
        rows = np.column_stack([ids, self.gain_adc_per_pe, self.time_offset_ns])
        np.savetxt(
            path, rows, fmt=["%d", "%.6g", "%.6g"], delimiter=",", header=HEADER, comments=""
        )


def read_constants(path: Path, n_pmt: int) -> PmtConstants:
    """Read the constants of ``n_pmt`` PMTs; every PMT must appear exactly once."""
    gain = np.full(n_pmt, np.nan)
    offset = np.full(n_pmt, np.nan)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConstantsError(f"{path}: cannot read ({exc.strerror})") from exc
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#") or text == HEADER:
            continue
        fields = text.split(",")
        where = f"{path}, line {number}"
        if len(fields) != 3:
            raise ConstantsError(f"{where}: expected 3 fields ({HEADER}), got {len(fields)}")
        try:
            pmt, g, t = int(fields[0]), float(fields[1]), float(fields[2])
        except ValueError as exc:
            raise ConstantsError(f"{where}: {exc}") from exc
        if not 0 <= pmt < n_pmt:
            raise ConstantsError(f"{where}: pmt_id {pmt} is outside 0..{n_pmt - 1}")
        if not np.isnan(gain[pmt]):
            raise ConstantsError(f"{where}: pmt_id {pmt} appears twice")
        if not g > 0:
            raise ConstantsError(f"{where}: gain must be positive, got {g}")
        gain[pmt], offset[pmt] = g, t
    missing = np.flatnonzero(np.isnan(gain))
    if len(missing):
        raise ConstantsError(f"{path}: no constants for {len(missing)} PMTs, e.g. {missing[0]}")
    return PmtConstants(gain, offset)
