"""Data quality monitoring: histograms, their merge, PMT status and checks.

``histogram`` holds the plain-data ``Hist`` type and ROOT file I/O (``fastread`` the quick
reader the merge uses); ``merge`` adds a run's per-file histogram files into one merged
file, exactly once per input; ``pmtstatus`` classifies PMTs (dead, hot, normal, other) from
the fraction of events in which each fired; ``checkspec`` reads the YAML check files,
``comparisons`` holds the KS and chi-square tests, ``checks`` evaluates checks into
``verdict``s. All of it works on files and arrays; the database side comes with the DQM
service.
"""
