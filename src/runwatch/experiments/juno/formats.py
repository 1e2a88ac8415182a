"""The ROOT trees the JUNO steps exchange: tree names, branches and their types.

One place so that the simulator, the step programs, the DQM and the tests agree. Jagged
branches (one entry per fired PMT) are marked ``var``; the others hold one value per
event. Times are nanoseconds, lengths millimetres, energies MeV.
"""

from __future__ import annotations

RAW_TREE = "events"
"""Raw data as the DAQ writes it (``*.rtraw``)."""
RAW_BRANCHES = {
    "event_id": "int64",  # unique within a run, increasing
    "timestamp_ns": "int64",  # trigger time, ns since the Unix epoch
    "trigger_type": "int32",  # a key of detector.TRIGGER_TYPES
    "pmt_id": "var * int32",  # fired PMTs, each once per event
    "adc": "var * float32",  # charge, ADC counts
    "tdc": "var * float32",  # first-hit time in the readout window, ns
    # Digitised waveforms, detector.WAVE_SAMPLES samples (1 ns, ADC counts) per fired PMT
    # in pmt_id order: most of a raw event's bytes, as at JUNO. No step needs them, so a
    # step reads only the branches it names (rootio.iterate reads nothing else).
    "wave": "var * int16",
}

CALIB_TREE = "calib"
"""Calibrated hits: gain and time offset of each PMT applied (``*.calib.root``)."""
CALIB_BRANCHES = {
    "event_id": "int64",
    "timestamp_ns": "int64",
    "trigger_type": "int32",
    "pmt_id": "var * int32",
    "npe": "var * float32",  # charge in photo-electrons
    "time_ns": "var * float32",  # hit time with the PMT's time offset removed
}

REC_TREE = "rec"
"""Reconstructed events (``*.rec.root``)."""
REC_BRANCHES = {
    "event_id": "int64",
    "timestamp_ns": "int64",
    "trigger_type": "int32",
    "x_mm": "float32",
    "y_mm": "float32",
    "z_mm": "float32",
    "t0_ns": "float32",  # fitted event time in the readout window
    "energy_mev": "float32",
    "total_pe": "float32",
    "nhit": "int32",  # fired PMTs
    "fit_ok": "bool",  # the time fit converged
}

TRUTH_TREE = "truth"
"""What the simulator generated, one entry per event (``*.truth.root``, never announced)."""
TRUTH_BRANCHES = {
    "event_id": "int64",
    "kind": "int32",  # a key of physics.EVENT_KINDS
    "x_mm": "float32",
    "y_mm": "float32",
    "z_mm": "float32",
    "t0_ns": "float32",
    "energy_mev": "float32",
    "n_pe": "int32",  # signal photo-electrons, dark counts excluded
}
