"""Check files: the data-quality checks declared per histogram in YAML, read and validated.

A check file (format in docs/dqm.md, "Checks and PMT status")::

    reference: {window: 5}          # default for checks that compare with a reference
    histograms:
      energy:                       # the histogram's name
        shape:                      # the check's name, unique per histogram
          kind: ks
          warning: {min: 0.05}      # p-value below 0.05: WARNING
          bad: {min: 0.01}          # p-value below 0.01: BAD
        mean:
          kind: mean
          warning: {min: 1.5, max: 2.5}
          bad: {min: 1.0, max: 3.0}
          shadow: true

Errors name the file, the line and the field ("checks.yaml:7: histograms.energy.shape.bad:
..."), using the YAML node checking of ``runwatch.yamlnodes``, so that pipeline
and check files report problems alike. References are only parsed here; the DQM service
resolves ``run N`` or a window of recent good runs into histograms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from yaml.nodes import MappingNode, Node, ScalarNode

from runwatch.dqm.verdict import Verdict
from runwatch.yamlnodes import NodeReader, YamlFileError, composed, node_kind

CheckKind = Literal[
    "ks", "chi2", "entries", "mean", "rms", "bin_content", "dead", "hot", "new_dead", "new_hot"
]
KINDS: tuple[CheckKind, ...] = (
    "ks",
    "chi2",
    "entries",
    "mean",
    "rms",
    "bin_content",
    "dead",
    "hot",
    "new_dead",
    "new_hot",
)
COMPARISON_KINDS = frozenset({"ks", "chi2"})
REFERENCE_KINDS = frozenset({"ks", "chi2", "new_dead", "new_hot"})
"""Kinds that need a reference run (a PMT status or a histogram to compare with)."""
TOP_KEYS = ("reference", "histograms")
CHECK_KEYS = ("kind", "warning", "bad", "shadow", "reference", "bins", "axis", "on_empty")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "bin_content": ("bins",),
    "mean": ("axis",),
    "rms": ("axis",),
}
"""Keys only some kinds take; every other key in CHECK_KEYS is for all kinds."""
LIMIT_KEYS = ("min", "max")


class CheckSpecError(YamlFileError):
    """One problem in a check file: ``str()`` is "path:line: field: problem"."""


@dataclass(frozen=True)
class Limits:
    """An allowed range: a value below ``min`` or above ``max`` breaks it (None: no bound)."""

    min: float | None = None
    max: float | None = None

    def broken(self, value: float) -> str | None:
        """How ``value`` breaks the limits ("< 0.01", "> 5"), or None when inside."""
        if self.min is not None and not value >= self.min:  # NaN breaks a bound
            return f"< {self.min:g}"
        if self.max is not None and not value <= self.max:
            return f"> {self.max:g}"
        return None

    def contains(self, other: Limits) -> bool:
        low = self.min is None or (other.min is not None and other.min >= self.min)
        high = self.max is None or (other.max is not None and other.max <= self.max)
        return low and high


@dataclass(frozen=True)
class ReferenceRun:
    """Compare with one chosen good run."""

    run: int


@dataclass(frozen=True)
class ReferenceWindow:
    """Compare with the sum of the ``runs`` most recent good runs before this one."""

    runs: int


Reference = ReferenceRun | ReferenceWindow


@dataclass(frozen=True)
class CheckSpec:
    """One declared check of one histogram.

    ``warning`` and ``bad`` are the limits of the checked value (a p-value for ks and chi2,
    the entries, mean, RMS, each bin's content, or a count of PMTs); outside ``bad`` is
    BAD, else outside ``warning`` is WARNING. ``bins`` (bin_content) are ROOT bin numbers,
    first and last included (0 the underflow); ``axis`` picks the axis of a 2D mean or RMS.
    ``on_empty`` is the verdict when the histogram or reference has no entries and the
    value is undefined. ``source`` is "file:line" where it was declared.
    """

    histogram: str
    name: str
    kind: CheckKind
    warning: Limits | None = None
    bad: Limits | None = None
    shadow: bool = False
    reference: Reference | None = None
    bins: tuple[int, int] | None = None
    axis: Literal["x", "y"] = "x"
    on_empty: Verdict = Verdict.WARNING
    source: str = ""

    @property
    def key(self) -> str:
        return f"{self.histogram}/{self.name}"


def parse_checks(text: str, path: str | Path) -> list[CheckSpec]:
    """Parse and validate a check file's text; raise CheckSpecError for the first problem."""
    with composed(text, path, CheckSpecError) as (root, loader):
        return _CheckParser(path, loader).checks(root)


def load_checks(path: str | Path) -> list[CheckSpec]:
    """Read and parse one check file; an unreadable file is a CheckSpecError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckSpecError(path, None, "", f"not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise CheckSpecError(path, None, "", f"cannot read the file: {exc.strerror}") from exc
    return parse_checks(text, path)


class _CheckParser(NodeReader):
    """The check schema on top of the YAML node checks."""

    error = CheckSpecError

    def checks(self, root: Node | None) -> list[CheckSpec]:
        if root is None:
            raise CheckSpecError(self.path, 1, "", "the file is empty; declare histograms")
        top = self.mapping(root, "", "a mapping with the key histograms")
        self.known(top, TOP_KEYS, "")
        default = None
        if "reference" in top:
            default = self.reference(top["reference"].value, "reference")
        if "histograms" not in top:
            self.fail(root, "histograms", "missing: a mapping of histogram names to checks")
        histograms = self.mapping(
            top["histograms"].value, "histograms", "a mapping of histogram names to checks"
        )
        if not histograms:
            self.fail(top["histograms"].value, "histograms", "expected at least one histogram")
        specs: list[CheckSpec] = []
        for hist_name, hist_entry in histograms.items():
            field = f"histograms.{hist_name}"
            checks = self.mapping(hist_entry.value, field, "a mapping of check names to checks")
            if not checks:
                self.fail(hist_entry.value, field, "expected at least one check")
            for name, entry in checks.items():
                where = f"{self.path}:{entry.key.start_mark.line + 1}"
                check = self.check(hist_name, name, entry.value, f"{field}.{name}", default)
                specs.append(dataclasses.replace(check, source=where))
        return specs

    def check(
        self, histogram: str, name: str, node: Node, field: str, default: Reference | None
    ) -> CheckSpec:
        entries = self.mapping(node, field, "a mapping of check settings")
        self.known(entries, CHECK_KEYS, field)
        if "kind" not in entries:
            self.fail(node, f"{field}.kind", f"missing: one of {', '.join(KINDS)}")
        kind = self.kind(entries["kind"].value, f"{field}.kind")
        for key, entry in entries.items():
            takers = [k for k, keys in KIND_KEYS.items() if key in keys]
            if takers and kind not in takers:
                self.fail(entry.key, f"{field}.{key}", f"only for kind {' or '.join(takers)}")
        values: dict[str, Any] = {"histogram": histogram, "name": name, "kind": kind}
        values |= self.levels(entries, node, field, kind)
        if "shadow" in entries:
            values["shadow"] = self.flag(entries["shadow"].value, f"{field}.shadow")
        values["reference"] = self.check_reference(entries, node, field, kind, default)
        if "bins" in entries:
            values["bins"] = self.bins(entries["bins"].value, f"{field}.bins")
        if "axis" in entries:
            values["axis"] = self.choice(entries["axis"].value, f"{field}.axis", ("x", "y"))
        if "on_empty" in entries:
            values["on_empty"] = Verdict(
                self.choice(entries["on_empty"].value, f"{field}.on_empty", tuple(Verdict))
            )
        return CheckSpec(**values)

    def kind(self, node: Node, field: str) -> CheckKind:
        value = self.value(node)
        for kind in KINDS:
            if value == kind:
                return kind
        self.fail(node, field, f"expected one of {', '.join(KINDS)}; got {node_kind(node)}")

    def choice(self, node: Node, field: str, allowed: tuple[str, ...]) -> str:
        value = self.value(node)
        if not isinstance(value, str) or value not in allowed:
            self.fail(node, field, f"expected one of {', '.join(allowed)}; got {node_kind(node)}")
        return value

    def flag(self, node: Node, field: str) -> bool:
        value = self.value(node)
        if not isinstance(value, bool):
            self.fail(node, field, f"expected true or false, got {node_kind(node)}")
        return value

    def number(self, node: Node, field: str) -> float:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(node, field, f"expected a number, got {node_kind(node)}")
        if not math.isfinite(value):
            self.fail(node, field, "expected a finite number")
        return float(value)

    def limits(self, node: Node, field: str, kind: CheckKind) -> Limits:
        entries = self.mapping(node, field, "a mapping with min and/or max")
        self.known(entries, LIMIT_KEYS, field)
        bounds = {k: self.number(e.value, f"{field}.{k}") for k, e in entries.items()}
        if not bounds:
            self.fail(node, field, "expected min and/or max")
        limits = Limits(bounds.get("min"), bounds.get("max"))
        if limits.min is not None and limits.max is not None and limits.min > limits.max:
            self.fail(node, field, f"min ({limits.min:g}) is above max ({limits.max:g})")
        if kind in COMPARISON_KINDS:
            if limits.max is not None:
                self.fail(node, field, "a p-value has only a min (small p: unlike)")
            if limits.min is not None and not 0 < limits.min < 1:
                self.fail(node, f"{field}.min", "a p-value limit is between 0 and 1")
        return limits

    def levels(
        self, entries: dict[str, Any], node: Node, field: str, kind: CheckKind
    ) -> dict[str, Limits]:
        levels: dict[str, Limits] = {
            level: self.limits(entries[level].value, f"{field}.{level}", kind)
            for level in ("warning", "bad")
            if level in entries
        }
        if not levels:
            self.fail(node, f"{field}.bad", "missing: give warning and/or bad limits")
        warning, bad = levels.get("warning"), levels.get("bad")
        if warning is not None and bad is not None and not bad.contains(warning):
            self.fail(
                entries["bad"].value,
                f"{field}.bad",
                "the bad limits must be looser than the warning limits "
                "(a value that is bad is also a warning)",
            )
        return levels

    def check_reference(
        self,
        entries: dict[str, Any],
        node: Node,
        field: str,
        kind: CheckKind,
        default: Reference | None,
    ) -> Reference | None:
        if kind not in REFERENCE_KINDS:
            if "reference" in entries:
                needs = ", ".join(sorted(REFERENCE_KINDS))
                self.fail(entries["reference"].key, f"{field}.reference", f"only for {needs}")
            return None
        if "reference" in entries:
            return self.reference(entries["reference"].value, f"{field}.reference")
        if default is None:
            self.fail(
                node,
                f"{field}.reference",
                "missing: 'run N' or {window: N} here or at the top of the file",
            )
        return default

    def reference(self, node: Node, field: str) -> Reference:
        if isinstance(node, MappingNode):
            entries = self.mapping(node, field, "{run: N} or {window: N}")
            self.known(entries, ("run", "window"), field)
            if len(entries) != 1:
                self.fail(node, field, "expected one of run or window")
            (key, entry), *_ = entries.items()
            number = self.integer(entry.value, f"{field}.{key}", 1)
            return ReferenceRun(number) if key == "run" else ReferenceWindow(number)
        value = self.value(node) if isinstance(node, ScalarNode) else None
        words = value.split() if isinstance(value, str) else []
        if len(words) == 2 and words[0] == "run" and words[1].isdigit() and int(words[1]) > 0:
            return ReferenceRun(int(words[1]))
        self.fail(node, field, f"expected 'run N' or {{window: N}}, got {node_kind(node)}")

    def bins(self, node: Node, field: str) -> tuple[int, int]:
        value = self.value(node)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] <= value[1]
        ):
            self.fail(node, field, "expected [first, last], ROOT bin numbers, first ≤ last")
        return value[0], value[1]
