"""Pipeline files: what steps run on which stream's files.

This module holds the parsed form. ``runwatch.workflow.pipeline_file`` reads and validates
YAML into it, with errors that name the file, line and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Scope = Literal["file", "run"]
DqmRole = Literal["merge"]
DQM_ROLES: tuple[DqmRole, ...] = ("merge",)


@dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    ``command`` and each value of ``outputs`` are Jinja2 templates. The variables are
    ``file`` (name, stem, url, run, stream, sequence, meta) for a file-scoped step, ``run``
    (number, stream) always, ``inputs`` (local paths after stage-in), ``outputs`` (name →
    file name in the work directory), ``threads``, ``sample_fraction``, ``task`` (key, id,
    batch, final) and ``params`` (the pipeline's parameters overlaid by the step's).

    ``every_s`` (run scope) makes *live* tasks while the run is taken: one at a time, at
    most every ``every_s`` seconds, each needing the previous live task so that its output
    is the next one's starting point (see ``runwatch.workflow.planner``). ``dqm="merge"``
    tells the DQM service that the step's one output is the run's merged histogram file.

    ``disk_mb`` is the scratch disk a batch job asks for; ``submit`` holds extra batch
    settings by executor name: ``htcondor`` a mapping of submit-description lines,
    ``slurm`` a list of sbatch options (other executors' entries are passed on as given).
    """

    name: str
    scope: Scope = "file"
    needs: tuple[str, ...] = ()
    command: str = ""
    threads: int = 1
    memory_mb: int = 0
    disk_mb: int = 0
    retries: int = 2
    timeout_s: float = 0.0  # 0: no limit
    outputs: Mapping[str, str] = field(default_factory=dict)
    batch: int | None = None  # run scope: also run for every N files done, while taking data
    sample_fraction: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)
    every_s: float | None = None  # run scope: also run live, at most this often, while taking data
    dqm: DqmRole | None = None  # "merge": the single output is the run's merged DQM histograms
    submit: Mapping[str, Any] = field(default_factory=dict)  # executor name -> its extras


@dataclass(frozen=True)
class Pipeline:
    name: str
    streams: tuple[str, ...]
    steps: Mapping[str, Step]  # in file order; ``needs`` only name earlier steps
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
