"""Hot and dead PMTs, told from the hits of a chunk of events (no I/O).

Until the conditions database brings each run's PMT status, the reconstruction finds the
PMTs it cannot use in the data itself, from all the events of a chunk (sampled out or
not, so the answer does not depend on the sample fraction):

- *dead*: never fired. A live PMT fires in at least its dark-count share of events
  (3 % at 30 kHz over 1 µs), so over ``MIN_EVENTS`` events the chance that a live one
  never fires is (0.97)^500 = 2e-7 -- none of the 17,612, in practice.
- *hot*: fired in more than half the events, mostly before any light can arrive. A hot
  PMT's first count is the earliest of many dark counts, spread over the readout; a PMT
  that fires often because it is close to a deployed source fires with the light. Left
  in, a hot PMT adds ~10 dark photo-electrons with a random time to half the events'
  prompt windows: with 20 of them, the fit of 0.5 MeV events failed in 60 % of cases.

A chunk of fewer than ``MIN_EVENTS`` events (the end of a file) says nothing: all its
PMTs are used.
"""

from __future__ import annotations

import numpy as np

from runwatch.experiments.juno import detector

MIN_EVENTS = 500
HOT_FIRED_FRACTION = 0.5
"""Normal PMTs fire in ~9 % of Physics events, 20 % with a 2.5 MeV source at the centre."""
EARLY_NS = detector.TRIGGER_TIME_NS - 50.0
"""Before this no light has arrived (it comes at TRIGGER_TIME_NS plus the time of flight)."""
HOT_EARLY_FRACTION = 0.5
"""A hot PMT's first count precedes EARLY_NS in ~80 % of events; a normal PMT's hits in
~3 % (dark counts only)."""


def unusable_pmts(pmt_id: np.ndarray, time_ns: np.ndarray, n_events: int, n_pmt: int) -> np.ndarray:
    """Mask (by PMT id) of the dead and hot PMTs seen in the hits of ``n_events`` events.

    ``pmt_id`` and ``time_ns`` are the chunk's flat hits (each PMT at most once per event).
    """
    if n_events < MIN_EVENTS:
        return np.zeros(n_pmt, dtype=bool)
    fired = np.bincount(pmt_id, minlength=n_pmt)
    early = np.bincount(pmt_id[time_ns < EARLY_NS], minlength=n_pmt)
    dead = fired == 0
    hot = (fired > HOT_FIRED_FRACTION * n_events) & (early > HOT_EARLY_FRACTION * fired)
    mask: np.ndarray = dead | hot
    return mask
