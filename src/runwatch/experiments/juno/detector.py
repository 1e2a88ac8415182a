"""JUNO's central detector in numbers, shared by the simulator and the step programs.

The values are rounded public design figures; the simulator and the reconstruction use
the same ones, as an experiment's simulation and reconstruction share one detector
description.
"""

from __future__ import annotations

N_PMT = 17_612
"""Large (20-inch) PMTs in the central detector."""

PMT_RADIUS_MM = 19_400.0
"""Radius of the sphere the PMT photocathodes sit on (built-in geometry)."""

LS_RADIUS_MM = 17_700.0
"""Radius of the acrylic sphere holding the liquid scintillator: events happen inside."""

PE_PER_MEV = 1_600.0
"""Photo-electrons collected in all PMTs per MeV deposited at the centre."""

REFRACTIVE_INDEX = 1.50
"""Effective group refractive index along a photon's path (scintillator, acrylic, water)."""

LIGHT_SPEED_MM_PER_NS = 299.792458 / REFRACTIVE_INDEX
"""Speed of scintillation light in the detector."""

ATTENUATION_LENGTH_MM = 20_000.0
"""Light attenuation length of the liquid scintillator."""

SCINTILLATION_TAU_NS = (4.6, 18.0)
"""Decay times of the fast and slow scintillation components."""

SCINTILLATION_WEIGHTS = (0.75, 0.25)
"""Fractions of the light in the fast and slow components."""

TTS_SIGMA_NS = 3.0
"""PMT transit-time spread (one standard deviation), a mix of MCP and dynode PMTs."""

DARK_RATE_HZ = 30_000.0
"""Dark-count rate of one PMT."""

READOUT_WINDOW_NS = 1_000.0
"""Length of the readout window of one triggered event."""

TRIGGER_TIME_NS = 200.0
"""Where in the readout window an event's light arrives (before the time of flight)."""

NOMINAL_GAIN_ADC_PER_PE = 100.0
"""ADC counts of one photo-electron for a PMT of nominal gain."""

TRIGGER_TYPES = {1: "global_trigger", 2: "calib_trigger", 3: "random_trigger"}
"""Trigger type codes stored with each event, and their names in JUNO's file names."""

WAVE_SAMPLES = 23
"""Digitised samples (1 ns each) the DAQ keeps per fired PMT, from a little before the hit:
chosen so that a mean raw event is ~60 kB on disk after LZ4, as JUNO's are."""

HOT_DARK_RATE_HZ = 10_000_000.0
"""Dark-count rate of a hot (noisy) PMT: ten counts per readout window, so it fires in all
but ~0.005 % of events."""
