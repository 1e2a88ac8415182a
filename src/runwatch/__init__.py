"""runwatch: keep-up production and data quality monitoring for physics experiments."""

from __future__ import annotations

__version__ = "0.1.0"
