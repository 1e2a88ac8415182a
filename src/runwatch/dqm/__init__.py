"""Data quality monitoring: histograms read from and written to ROOT files, and their merge.

``histogram`` holds the plain-data ``Hist`` type and ROOT file I/O; ``merge`` adds a run's
per-file histogram files into one merged file, exactly once per input.
"""
