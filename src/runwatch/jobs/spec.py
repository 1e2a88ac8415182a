"""The job spec: everything the job wrapper needs, rendered by the scheduler at submit time
and stored in ``Attempt.spec`` (JSON), so that the wrapper is generic and a worker node
needs no pipeline files.

Keys:
- ``command`` (str): shell command, run in the attempt's work directory.
- ``inputs`` (list of {"url": str, "path": str, "adler32": str | None}): staged in before
  the command runs; ``path`` is absolute. A ``file://`` input whose path equals the URL's
  own path is used in place (no copy).
- ``outputs`` (dict name -> relative path in the work directory): must all exist after a
  zero exit code, else the attempt fails.
- ``destination`` (str): directory URL (``file://...``) the outputs are stored into,
  ``<data root>/<stream>/<run>/<step>/``.
- ``timeout_s`` (float, 0 = none), ``threads`` (int), ``heartbeat_s`` (float).
- ``env`` (dict str -> str): extra environment for the command.
- ``retry`` ({"backoff_seconds": float, "backoff_max_seconds": float}).
- ``storage`` (optional; the ``[storage]`` settings: retries, backoff_seconds,
  timeout_seconds): how the wrapper copies inputs and outputs. Specs written before it
  existed lack it, and their jobs copy with the defaults.
"""

from __future__ import annotations

from typing import Any, TypedDict


class InputSpec(TypedDict):
    url: str
    path: str
    adler32: str | None


class RetrySpec(TypedDict):
    backoff_seconds: float
    backoff_max_seconds: float


class _OptionalSpec(TypedDict, total=False):
    # (not NotRequired[...]: with postponed annotations Python 3.11 would count it required)
    storage: dict[str, float]


class JobSpec(_OptionalSpec):
    command: str
    inputs: list[InputSpec]
    outputs: dict[str, str]
    destination: str
    timeout_s: float
    threads: int
    heartbeat_s: float
    env: dict[str, str]
    retry: RetrySpec


def job_spec(raw: dict[str, Any]) -> JobSpec:
    """Type the JSON read back from the database (written by the scheduler)."""
    missing = set(JobSpec.__required_keys__) - set(raw)
    if missing:
        raise ValueError(f"job spec lacks {', '.join(sorted(missing))}")
    return raw  # type: ignore[return-value]
