"""Verdicts of data-quality checks, one check's result, and a run's verdict from them.

Pure (no I/O). The rule for a run: the worst verdict of its non-shadow check results;
GOOD when it has none (nothing declared is nothing wrong; whether a run lacks results it
should have is the DQM service's question, not this rule's). Shadow results are
evaluated and stored like the others but never make a run worse, so a new check can be
watched on real runs before it may alarm anyone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class Verdict(enum.StrEnum):
    GOOD = "good"
    WARNING = "warning"
    BAD = "bad"

    @property
    def severity(self) -> int:
        """0, 1, 2 for good, warning, bad: ``max(verdicts, key=...)`` is the worst."""
        return _SEVERITY[self]


_SEVERITY = {Verdict.GOOD: 0, Verdict.WARNING: 1, Verdict.BAD: 2}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of some verdicts; GOOD for none."""
    return max(verdicts, key=lambda v: v.severity, default=Verdict.GOOD)


@dataclass(frozen=True)
class CheckResult:
    """One check evaluated on one histogram of a run.

    ``reason`` is one line for the shifter ("KS p=0.003 < 0.01 (bad)"); ``values`` the
    statistics computed (``p_value``, ``chi2``, ``ndf``, ``mean``, ...) for storage and
    trend plots; ``shadow`` copies the check's flag, so a stored result says it by itself.
    """

    histogram: str
    check: str
    kind: str
    verdict: Verdict
    reason: str
    values: Mapping[str, float] = field(default_factory=dict)
    shadow: bool = False

    @property
    def key(self) -> str:
        """``histogram/check``: unique within a run, stable across re-evaluations."""
        return f"{self.histogram}/{self.check}"


def run_verdict(results: Iterable[CheckResult]) -> Verdict:
    """The run's verdict: the worst of the non-shadow results, GOOD if there are none."""
    return worst(r.verdict for r in results if not r.shadow)
