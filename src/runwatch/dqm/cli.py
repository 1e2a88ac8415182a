"""``runwatch dqm merge|pmt|check``: data-quality work on histogram files, no database.

These commands are the DQM library (``runwatch.dqm``) at a shell prompt: merge per-file
histogram files into a run's merged file exactly once, classify PMTs, evaluate a check
file. The library (numpy, uproot) is imported inside the commands so that
``runwatch --help`` stays fast. The run-level commands on the deployment's database
(``status``, ``checks``, ``trend`` and ``pmt RUN``) are in ``runwatch.dqm.runs_cli``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from runwatch.dqm.checkspec import CheckSpec
    from runwatch.dqm.histogram import Hist
    from runwatch.dqm.merge import Contribution, MergeReport
    from runwatch.dqm.pmtstatus import ClassChanges, Cuts, PmtClass, PmtStatus
    from runwatch.dqm.verdict import CheckResult

dqm_app = typer.Typer(
    help="Data quality: runs' verdicts, checks, PMT status and trends; histogram files.",
    no_args_is_help=True,
)

PMT_HITS = "pmt_hits"
N_EVENTS = "n_events"
"""The JUNO hist step's per-PMT counts and event count (docs/juno.md)."""

EXIT_NOT_EVALUATED = 3
VERDICT_STYLE = {"good": "green", "warning": "yellow", "bad": "red", "error": "magenta"}


class CutsPreset(enum.StrEnum):
    """A detector's PMT cuts by name, for ``--cuts``."""

    DEFAULT = "default"
    JUNO_TEST = "juno-test"


def register(app: typer.Typer) -> None:
    """Add this feature's commands to ``app``."""
    from runwatch.dqm.alarms_cli import alarms_app
    from runwatch.dqm.runs_cli import add_run_commands

    add_run_commands(dqm_app)
    dqm_app.add_typer(alarms_app, name="alarms")
    app.add_typer(dqm_app, name="dqm")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


# -- merge ------------------------------------------------------------------------------


@dqm_app.command("merge")
def merge(
    merged: Path = typer.Argument(..., help="The merged file: created, or added to."),
    inputs: list[Path] = typer.Argument(
        ..., help="Per-file histogram files to merge, and at most one earlier merged file."
    ),
) -> None:
    """Merge per-file histogram files into MERGED, each exactly once, incrementally.

    An input is identified by its absolute path and its adler32 checksum: one already in
    MERGED with the same checksum is skipped; one whose checksum changed (re-produced)
    makes the merge rebuild from scratch. An input that is itself a merged file (the
    previous live merge of the run) is the starting point: MERGED becomes a copy of it
    plus the inputs it does not include. An unreadable or incompatible input is reported
    and left out whole; the others are still merged. Exit code 1 if any input was in
    error, else 0.
    """
    from runwatch.dqm.merge import merge_into

    _refuse_to_overwrite(merged, inputs)
    start, contributions = _sort_inputs(inputs)
    report = merge_into(merged, contributions, start=start)
    _print_merge(report)
    if report.errors:
        raise typer.Exit(1)


def _refuse_to_overwrite(merged: Path, inputs: Sequence[Path]) -> None:
    """Stop before a mistaken MERGED (an input, or a file of another kind) is overwritten."""
    from runwatch.dqm.histogram import HistogramFileError, read_file
    from runwatch.dqm.merge import META_FORMAT

    if any(p.resolve() == merged.resolve() for p in inputs):
        raise _fail(f"{merged} is both the merged file and an input", 2)
    if not merged.exists():
        return
    try:
        meta = read_file(merged, names=()).meta
    except HistogramFileError:
        return  # damaged merged file: merge_into rebuilds it from the inputs and says so
    if meta is None or meta.get("format") != META_FORMAT:
        raise _fail(
            f"{merged} is not a merged histogram file (no contribution list); "
            "refusing to overwrite it (the merged file comes first)",
            2,
        )


def _sort_inputs(inputs: Sequence[Path]) -> tuple[Path | None, list[Contribution]]:
    """The merged file among the inputs (the starting point), and the per-file inputs.

    A per-file input's key is its absolute path: the engine re-runs a task into the same
    path, so a re-produced file replaces its old contribution. One reading of each file
    gives both its kind (a merged file's metadata) and its events (``n_events``).
    """
    from runwatch.dqm.histogram import HistogramFileError, read_file
    from runwatch.dqm.merge import META_FORMAT, Contribution

    merged: list[Path] = []
    contributions = []
    for path in inputs:
        try:
            found = read_file(path, names=(N_EVENTS,))
        except (HistogramFileError, OSError):
            found = None  # merge_into reads the file again and reports why it cannot
        if found is not None and (found.meta or {}).get("format") == META_FORMAT:
            merged.append(path)
            continue
        hist = None if found is None else found.hists.get(N_EVENTS)
        events = 0 if hist is None else round(float(hist.sumw.sum()))
        contributions.append(Contribution(_input_key(path), path, events=events))
    if len(merged) > 1:
        raise _fail(
            f"more than one merged file among the inputs ({', '.join(map(str, merged))}); "
            "give the latest one only",
            2,
        )
    return (merged[0] if merged else None), contributions


def _input_key(path: Path) -> str:
    """A per-file input's key: its URL when the job staged it in from root:// or
    https:// (the attempt's folder changes from one merge to the next, the URL does not),
    else its absolute path."""
    from runwatch.storage.urls import staged_url
    from runwatch.workflow.render import INPUTS_ENV

    inputs = os.environ.get(INPUTS_ENV)
    return (staged_url(path, inputs) if inputs else None) or os.path.abspath(path)


def _print_merge(report: MergeReport) -> None:
    console = Console()

    def names(keys: Sequence[str]) -> str:
        # A key is an input's absolute path; its file name is what a reader scans for.
        return ", ".join(Path(k).name for k in keys) if keys else "-"

    console.print(f"[bold]merged file:[/bold] {report.merged_path}")
    if report.started_from is not None:
        console.print(f"started from: {report.started_from}")
    console.print(f"added: {len(report.added)} ({names(report.added)})")
    console.print(f"skipped, already included: {len(report.skipped)} ({names(report.skipped)})")
    if report.rebuilt:
        console.print(f"rebuilt from scratch; re-produced inputs: {names(report.replaced)}")
    for note in report.notes:
        console.print(f"note: {note}")
    if report.errors:
        table = Table("input", "path", "reason", title=f"errors: {len(report.errors)}")
        for error in report.errors:
            table.add_row(error.key, error.path, error.reason, style="red")
        console.print(table)
    else:
        console.print("errors: 0")
    console.print(
        f"included: {report.files_included} files, {report.events_included} events"
        + ("" if report.written else " (merged file unchanged)")
    )


# -- pmt --------------------------------------------------------------------------------


@dqm_app.command("pmt")
def pmt(
    target: str = typer.Argument(
        ...,
        metavar="RUN|HISTFILE",
        help="A run number (its stored status), or a histogram file with pmt_hits.",
    ),
    cuts: CutsPreset = typer.Option(
        CutsPreset.DEFAULT, "--cuts", help="The cuts to start from; the options below override."
    ),
    dead: float | None = typer.Option(None, "--dead", help="Dead below this fired fraction."),
    hot: float | None = typer.Option(None, "--hot", help="Hot above this fired fraction."),
    normal_low: float | None = typer.Option(
        None, "--normal-low", help="Normal band's lower fired fraction."
    ),
    normal_high: float | None = typer.Option(
        None, "--normal-high", help="Normal band's upper fired fraction."
    ),
    min_events: int | None = typer.Option(
        None, "--min-events", help="Fewer events than this: every PMT unknown."
    ),
    previous: Path | None = typer.Option(
        None, "--previous", help="Histogram file of an earlier run: list PMTs whose class changed."
    ),
    list_classes: str | None = typer.Option(
        None, "--list", help="Comma-separated classes whose PMT ids to print, e.g. dead,hot."
    ),
    set_cut: list[str] = typer.Option(
        [], "--set-cut", help="RUN only: store the run's own cut, name=value (repeatable)."
    ),
    by: str | None = typer.Option(None, "--by", help="RUN only: who sets the cuts."),
    comment: str = typer.Option("", "--comment", help="RUN only: why the cuts are set."),
    history: int | None = typer.Option(
        None, "--history", help="RUN only: this PMT's fraction and class in the last 20 runs."
    ),
) -> None:
    """PMT classes of a run, or of a (merged or per-file) histogram file: counts, changes.

    With a run number: its stored status from its latest merge, the cuts in force and the
    PMTs whose class changed since the previous good run; --set-cut stores the run's own
    cuts (with --by) and re-evaluates the run; --history PMT shows one PMT over the
    runs up to RUN. With a file: classified now with --cuts
    and the options overriding them; --previous compares with another file. A PMT's
    fired fraction is pmt_hits / n_events; cuts are fractions, not percent (0.01 is 1 %).
    Exit code 1 for a file that cannot be read or lacks those histograms, or a run
    without a PMT status.
    """
    from runwatch.dqm.pmtstatus import changed_since
    from runwatch.dqm.runs_cli import RunPmtRequest, pmt_of_run

    histfile = Path(target)
    if target.isdigit() and not histfile.exists():
        listed_names = [cls.value for cls in _classes(list_classes)]
        pmt_of_run(int(target), RunPmtRequest(set_cut, by, comment, listed_names, history))
        return
    if set_cut or history is not None:
        raise typer.BadParameter("--set-cut and --history are for a run, not a file")

    overrides = {
        "dead": dead,
        "hot": hot,
        "normal_low": normal_low,
        "normal_high": normal_high,
        "min_events": min_events,
    }
    in_force = _cuts(cuts, {k: v for k, v in overrides.items() if v is not None})
    listed = _classes(list_classes)
    status = _status_of_file(histfile, in_force)
    console = Console()
    console.print(f"[bold]{histfile}[/bold]: {len(status)} PMTs, {status.n_events} events")
    console.print(f"cuts ({cuts.value}): {_describe(in_force)}")
    table = Table("class", "PMTs")
    for cls, count in status.counts().items():
        table.add_row(cls.value, str(count))
    console.print(table)
    for cls in listed:
        console.print(f"{cls.value} ids: {', '.join(map(str, status.ids(cls).tolist())) or '-'}")
    if previous is not None:
        try:
            changes = changed_since(_status_of_file(previous, in_force), status)
        except ValueError as exc:
            raise _fail(f"{previous} against {histfile}: {exc}") from exc
        print_changes(console, str(previous), changes)


def print_changes(console: Console, since: str, changes: ClassChanges) -> None:
    """How many PMTs changed class since an earlier run, how many became dead or hot, and
    a table of them."""
    from runwatch.dqm.pmtstatus import PmtClass

    new_dead, new_hot = len(changes.became(PmtClass.DEAD)), len(changes.became(PmtClass.HOT))
    console.print(
        f"changed since {since}: {len(changes)} PMTs ({new_dead} new dead, {new_hot} new hot)"
    )
    if len(changes):
        table = Table("pmt", "before", "now")
        for pmt_id, old, new in changes:
            table.add_row(str(pmt_id), old.value, new.value)
        console.print(table)


def _cuts(preset: CutsPreset, overrides: Mapping[str, float | int]) -> Cuts:
    """The preset's cuts with the command line's overrides; bad cuts are a usage error."""
    from runwatch.dqm.pmtstatus import DEFAULT_CUTS, JUNO_TEST_CUTS, CutsError

    base = JUNO_TEST_CUTS if preset is CutsPreset.JUNO_TEST else DEFAULT_CUTS
    try:
        return base.override(**overrides)
    except CutsError as exc:
        raise typer.BadParameter(str(exc), param_hint="cuts") from exc


def _classes(text: str | None) -> list[PmtClass]:
    from runwatch.dqm.pmtstatus import PmtClass

    if not text:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = {cls.value: cls for cls in PmtClass}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise typer.BadParameter(
            f"unknown class {', '.join(unknown)}; known: {', '.join(known)}", param_hint="--list"
        )
    return [known[name] for name in names]


def _describe(cuts: Cuts) -> str:
    return (
        f"dead < {cuts.dead:g}, hot > {cuts.hot:g}, "
        f"normal {cuts.normal_low:g}-{cuts.normal_high:g}, min events {cuts.min_events}"
    )


def _status_of_file(path: Path, cuts: Cuts) -> PmtStatus:
    """The PMT status of one histogram file; exit 1 with the reason when there is none."""
    from runwatch.dqm.histogram import HistogramFileError, read_histograms
    from runwatch.dqm.pmtstatus import status_from_hists

    try:
        hists = read_histograms(path, names=(PMT_HITS, N_EVENTS))
    except HistogramFileError as exc:
        raise _fail(str(exc)) from exc
    missing = [name for name in (PMT_HITS, N_EVENTS) if name not in hists]
    if missing:
        raise _fail(f"{path}: no {' or '.join(missing)} histogram (the hist step's PMT counts)")
    try:
        return status_from_hists(hists[PMT_HITS], hists[N_EVENTS], cuts)
    except ValueError as exc:
        raise _fail(f"{path}: {exc}") from exc


# -- check ------------------------------------------------------------------------------


class NotEvaluated(Exception):
    """A check that could not be evaluated on these files (shown as ``error``)."""


@dataclass(frozen=True)
class Row:
    """One line of the check table: a result, or why there is none."""

    spec: CheckSpec
    result: CheckResult | None
    error: str = ""


@dqm_app.command("check")
def check(
    checks: Path = typer.Argument(..., help="The check file (YAML, format in docs/dqm.md)."),
    histfile: Path = typer.Argument(..., help="The run's histogram file to check."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Histogram file of a good run: the reference of every check."
    ),
    cuts: CutsPreset = typer.Option(
        CutsPreset.DEFAULT, "--cuts", help="PMT cuts of the dead/hot/new_dead/new_hot checks."
    ),
) -> None:
    """Evaluate a check file on a histogram file and print each verdict and the run's.

    PMT-status checks classify the checked histogram (pmt_hits) over n_events. Without a
    database a check's declared reference (run N, a window) cannot be resolved: --reference
    stands for it, and a check that needs one without --reference is an error. A histogram
    missing from HISTFILE is BAD. Exit code: 0 GOOD, 1 WARNING, 2 BAD (the run's verdict,
    shadow checks left out); 3 when the checks could not all be evaluated (a check-file
    error, printed as file:line: field: problem; an unreadable file; a missing reference).
    """
    from runwatch.dqm.checkspec import CheckSpecError, load_checks
    from runwatch.dqm.verdict import run_verdict

    try:
        specs = load_checks(checks)
    except CheckSpecError as exc:
        raise _fail(str(exc), EXIT_NOT_EVALUATED) from exc
    hists = _read_all(histfile)
    reference_hists = None if reference is None else _read_all(reference)
    evaluator = _Evaluator(histfile, hists, reference_hists, _cuts(cuts, {}))
    rows = [evaluator.row(spec) for spec in specs]
    _print_checks(rows)
    verdict = run_verdict(row.result for row in rows if row.result is not None)
    errors = sum(1 for row in rows if row.result is None)
    style = VERDICT_STYLE[verdict.value]
    Console().print(f"run verdict: [{style}]{verdict.value.upper()}[/{style}]")
    if errors:
        raise _fail(f"{errors} of {len(rows)} checks not evaluated", EXIT_NOT_EVALUATED)
    raise typer.Exit(verdict.severity)


def _read_all(path: Path) -> dict[str, Hist]:
    from runwatch.dqm.histogram import HistogramFileError, read_histograms

    try:
        return read_histograms(path)
    except HistogramFileError as exc:
        raise _fail(str(exc), EXIT_NOT_EVALUATED) from exc


@dataclass
class _Evaluator:
    """Evaluates checks on one file's histograms, PMT statuses computed once per histogram."""

    path: Path
    hists: Mapping[str, Hist]
    reference: Mapping[str, Hist] | None
    cuts: Cuts
    _statuses: dict[tuple[str, str], PmtStatus] = field(default_factory=dict)

    def row(self, spec: CheckSpec) -> Row:
        from runwatch.dqm.checks import CheckError

        try:
            return Row(spec, self.evaluate(spec))
        except (CheckError, NotEvaluated) as exc:
            return Row(spec, None, str(exc))

    def evaluate(self, spec: CheckSpec) -> CheckResult:
        from runwatch.dqm.checks import STATUS_KINDS, evaluate_histogram, evaluate_status
        from runwatch.dqm.checkspec import REFERENCE_KINDS
        from runwatch.dqm.verdict import CheckResult, Verdict

        needed = [spec.histogram] + ([N_EVENTS] if spec.kind in STATUS_KINDS else [])
        missing = [name for name in needed if name not in self.hists]
        if missing:
            reason = f"{' and '.join(missing)} not in {self.path.name}"
            return CheckResult(
                spec.histogram, spec.name, spec.kind, Verdict.BAD, reason, {}, spec.shadow
            )
        wants_reference = spec.kind in REFERENCE_KINDS
        if wants_reference and self.reference is None:
            raise NotEvaluated(f"a {spec.kind} check needs a reference: give --reference")
        if spec.kind in STATUS_KINDS:
            status = self.status(self.hists, spec.histogram, "")
            ref = (
                self.status(self.reference, spec.histogram, "reference")
                if wants_reference
                else None
            )
            return evaluate_status(spec, status, ref)
        ref_hist = self.reference_hist(spec.histogram) if wants_reference else None
        return evaluate_histogram(spec, self.hists[spec.histogram], ref_hist)

    def reference_hist(self, name: str) -> Hist:
        assert self.reference is not None
        if name not in self.reference:
            raise NotEvaluated(f"{name} not in the reference file")
        return self.reference[name]

    def status(self, hists: Mapping[str, Hist] | None, name: str, which: str) -> PmtStatus:
        from runwatch.dqm.pmtstatus import status_from_hists

        assert hists is not None
        if (which, name) in self._statuses:
            return self._statuses[(which, name)]
        for needed in (name, N_EVENTS):
            if needed not in hists:
                raise NotEvaluated(f"{needed} not in the {which or 'checked'} file")
        try:
            status = status_from_hists(hists[name], hists[N_EVENTS], self.cuts)
        except ValueError as exc:
            raise NotEvaluated(f"no PMT status from {name}: {exc}") from exc
        self._statuses[(which, name)] = status
        return status


def _print_checks(rows: Sequence[Row]) -> None:
    table = Table("histogram", "check", "verdict", "reason", "shadow")
    for row in rows:
        verdict = "error" if row.result is None else row.result.verdict.value
        reason = row.error if row.result is None else row.result.reason
        style = VERDICT_STYLE[verdict]
        table.add_row(
            row.spec.histogram,
            row.spec.name,
            f"[{style}]{verdict}[/{style}]",
            reason,
            "yes" if row.spec.shadow else "",
        )
    Console().print(table)
