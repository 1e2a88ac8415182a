"""``runwatch dqm status|checks|trend`` and ``dqm pmt RUN``: the DQM's verdicts on runs,
read from (and, for re-evaluation and per-run cuts, written to) the deployment's database.

The file-level commands (``dqm merge|pmt HISTFILE|check``) live in ``runwatch.dqm.cli``;
``add_run_commands`` adds these to the same ``runwatch dqm`` group. The DQM library and
service are imported inside the commands so that ``runwatch --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from runwatch.catalogue.models import Run
from runwatch.context import Context
from runwatch.dqm.cli import VERDICT_STYLE, _fail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from runwatch.dqm.models import DqmMerge, DqmPmtStatus

console = Console()
HISTORY_RUNS = 20
"""Runs shown by ``dqm pmt RUN --history PMT``."""


def add_run_commands(app: typer.Typer) -> None:
    """Add the run-level commands to ``runwatch dqm``."""
    app.command("status")(status)
    app.command("checks")(checks)
    app.command("trend")(trend)


def _styled(verdict: str) -> str:
    style = VERDICT_STYLE.get(verdict, "")
    return f"[{style}]{verdict}[/{style}]" if style else verdict


def _run(session: Session, number: int) -> Run:
    run = session.scalar(sa.select(Run).where(Run.number == number))
    if run is None:
        raise _fail(f"no run {number}")
    return run


def parse_runs(text: str) -> list[int]:
    """Run numbers from '1234', '1230-1240' or '1230,1232,1240-1242'."""
    numbers: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise typer.BadParameter(f"{part!r}: expected N or N-M", param_hint="RUNS")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise typer.BadParameter(f"{part!r}: {last} is before {first}", param_hint="RUNS")
        numbers.extend(range(first, last + 1))
    return numbers


# -- status -----------------------------------------------------------------------------


def status(
    run: int | None = typer.Argument(None, help="Run number; without it, the recent runs."),
    last: int = typer.Option(20, "--last", min=1, help="Recent runs listed (without RUN)."),
) -> None:
    """Runs' DQM verdicts; with RUN, its merge, completeness, PMT classes and checks."""
    ctx = Context.load()
    with ctx.db.read_session() as session:
        if run is None:
            _print_recent(session, last)
        else:
            _print_run(session, _run(session, run))


def _print_recent(session: Session, last: int) -> None:
    from runwatch.dqm.models import DqmPmtStatus, DqmRunQuality
    from runwatch.dqm.store import latest_merge

    query = (
        sa.select(Run, DqmRunQuality, DqmPmtStatus)
        .join(DqmRunQuality, DqmRunQuality.run_id == Run.id)
        .outerjoin(DqmPmtStatus, DqmPmtStatus.run_id == Run.id)
        .order_by(Run.number.desc())
        .limit(last)
    )
    table = Table("run", "stream", "verdict", "final", "files", "events", "dead", "hot", "reason")
    for run, quality, pmt in session.execute(query):
        merge = latest_merge(session, run.id)
        counts = pmt.counts if pmt is not None else {}
        table.add_row(
            str(run.number),
            run.stream,
            _styled(quality.verdict.value),
            "yes" if quality.final else "live",
            _completeness(merge, files=True),
            _completeness(merge, files=False),
            str(counts.get("dead", "-")),
            str(counts.get("hot", "-")),
            quality.reason,
        )
    console.print(table)


def _completeness(merge: DqmMerge | None, files: bool) -> str:
    if merge is None:
        return "-"
    if files:
        return f"{merge.files_included}/{merge.files_total}"
    total = "?" if merge.events_total is None else str(merge.events_total)
    return f"{merge.events_included}/{total}"


def _print_run(session: Session, run: Run) -> None:
    from runwatch.dqm.models import DqmPmtStatus, DqmRunQuality
    from runwatch.dqm.store import latest_merge

    quality = session.get(DqmRunQuality, run.id)
    merge = latest_merge(session, run.id)
    console.print(f"[bold]run {run.number}[/bold] ({run.stream})")
    if quality is None or merge is None:
        console.print("not judged yet: no merged histograms registered")
        raise typer.Exit(1)
    kind = "final" if quality.final else "live"
    console.print(f"verdict: {_styled(quality.verdict.value)} ({kind}): {quality.reason}")
    console.print(
        f"merge {merge.id} at {merge.merged_at:%Y-%m-%d %H:%M:%S}: files "
        f"{_completeness(merge, True)}, events {_completeness(merge, False)}; {merge.url}"
    )
    for error in merge.errors:
        console.print(f"[red]left out[/red] {error.get('path')}: {error.get('reason')}")
    pmt = session.get(DqmPmtStatus, run.id)
    if pmt is not None:
        counts = ", ".join(f"{cls} {n}" for cls, n in pmt.counts.items())
        console.print(f"PMTs ({pmt.n_events} events): {counts}")
    _print_results(session, run)


def _print_results(session: Session, run: Run) -> None:
    from runwatch.dqm.models import DqmCheckResult

    query = sa.select(DqmCheckResult).where(DqmCheckResult.run_id == run.id)
    rows = session.scalars(query.order_by(DqmCheckResult.key)).all()
    table = Table("histogram", "check", "kind", "verdict", "reason", "reference", "shadow")
    for row in rows:
        table.add_row(
            row.histogram,
            row.check,
            row.kind,
            _styled(row.verdict.value),
            row.reason,
            row.reference or "",
            "yes" if row.shadow else "",
        )
    console.print(table if rows else "no check results")


# -- checks -----------------------------------------------------------------------------


def checks(
    runs: str = typer.Argument(..., help="A run, or runs: 1234, 1230-1240, 1230,1235."),
    rerun: bool = typer.Option(
        False, "--rerun", help="Evaluate the checks again on the runs' latest merges first."
    ),
) -> None:
    """A run's check results; --rerun re-evaluates them (e.g. after the check file changed).

    For several runs, one line per run with its verdict. Runs are re-evaluated oldest first,
    so a rolling reference sees the new verdicts of the runs before.
    """
    from runwatch.dqm.models import DqmRunQuality
    from runwatch.dqm.service import reevaluate

    numbers = parse_runs(runs)
    ctx = Context.load()
    if rerun:
        with ctx.db.session() as session:
            judged = reevaluate(session, ctx.settings, numbers)
            console.print(f"re-evaluated {len(judged)} of {len(numbers)} runs")
    with ctx.db.read_session() as session:
        if len(numbers) == 1:
            _print_results(session, _run(session, numbers[0]))
            return
        query = (
            sa.select(Run.number, DqmRunQuality)
            .join(DqmRunQuality, DqmRunQuality.run_id == Run.id)
            .where(Run.number.in_(numbers))
            .order_by(Run.number)
        )
        table = Table("run", "verdict", "final", "reason")
        for number, quality in session.execute(query):
            final = "yes" if quality.final else "live"
            table.add_row(str(number), _styled(quality.verdict.value), final, quality.reason)
        console.print(table)


# -- trend ------------------------------------------------------------------------------


def trend(
    quantity: str = typer.Argument(..., help="e.g. events, event_rate_hz, pmt_dead, latency_s."),
    last: int = typer.Option(20, "--last", min=1, help="The last N runs that have it."),
    stream: str | None = typer.Option(None, "--stream", help="Only runs of this stream."),
) -> None:
    """A per-run quantity over the last runs (docs/dqm.md lists them), oldest first."""
    from runwatch.dqm import trends

    ctx = Context.load()
    with ctx.db.read_session() as session:
        points = trends.trend(session, quantity, last, stream)
        if not points:
            known = ", ".join(trends.quantities(session)) or "none yet"
            raise _fail(f"no runs with {quantity}; stored quantities: {known}")
    table = Table("run", quantity)
    for number, value in points:
        table.add_row(str(number), f"{value:.6g}")
    console.print(table)


# -- pmt RUN ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPmtRequest:
    """What ``runwatch dqm pmt RUN`` was asked: cuts to store, classes to list, a history."""

    set_cuts: Sequence[str] = ()
    by: str | None = None
    comment: str = ""
    listed: Sequence[str] = ()
    history: int | None = None


def pmt_of_run(number: int, request: RunPmtRequest) -> None:
    """``runwatch dqm pmt RUN``: the stored PMT status; cuts are stored first if asked."""
    from runwatch.dqm.models import DqmPmtStatus

    ctx = Context.load()
    if request.set_cuts:
        _set_cuts(ctx, number, request.set_cuts, request.by, request.comment)
    with ctx.db.read_session() as session:
        run = _run(session, number)
        row = session.get(DqmPmtStatus, run.id)
        if row is None:
            raise _fail(f"run {number} has no PMT status (no merge with pmt_hits and n_events)")
        _print_pmt(session, run, row, request.listed)
        if request.history is not None:
            _print_history(session, run, request.history)


def _print_history(session: Session, run: Run, pmt_id: int) -> None:
    from runwatch.dqm.service import pmt_history

    table = Table("run", "fired fraction", "class", title=f"PMT {pmt_id}, {run.stream} runs")
    for point in pmt_history(session, pmt_id, HISTORY_RUNS, run.stream, until=run.number):
        table.add_row(str(point.run), f"{point.fraction:.4%}", point.pmt_class)
    console.print(table)


def _set_cuts(
    ctx: Context, number: int, assignments: Sequence[str], by: str | None, comment: str
) -> None:
    from runwatch.dqm.pmtstatus import CutsError
    from runwatch.dqm.service import set_run_cuts

    if not by:
        raise typer.BadParameter("say who sets the cuts", param_hint="--by")
    values: dict[str, float] = {}
    for text in assignments:
        name, equals, value = text.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            equals = ""
        if not equals:
            raise typer.BadParameter(f"{text!r}: expected name=value", param_hint="--set-cut")
    with ctx.db.session() as session:
        try:
            cuts = set_run_cuts(session, ctx.settings, _run(session, number), values, by, comment)
        except CutsError as exc:
            raise typer.BadParameter(str(exc), param_hint="--set-cut") from exc
    console.print(f"run {number}: cuts set by {by}; re-evaluated with {cuts}")


def _print_pmt(session: Session, run: Run, row: DqmPmtStatus, listed: Sequence[str]) -> None:
    from runwatch.dqm.cli import _describe, print_changes
    from runwatch.dqm.models import DqmRunCuts
    from runwatch.dqm.pmtstatus import PmtClass
    from runwatch.dqm.service import changed_since_previous_good, stored_status

    status = stored_status(row)
    own = session.get(DqmRunCuts, run.id)
    console.print(f"[bold]run {run.number}[/bold]: {len(status)} PMTs, {row.n_events} events")
    source = "detector" if own is None else f"run's own {own.cuts} set by {own.set_by}"
    console.print(f"cuts ({source}): {_describe(status.cuts)}")
    table = Table("class", "PMTs")
    for cls, count in row.counts.items():
        table.add_row(cls, str(count))
    console.print(table)
    for name in listed:
        ids = status.ids(PmtClass(name)).tolist()
        console.print(f"{name} ids: {', '.join(map(str, ids)) or '-'}")
    found = changed_since_previous_good(session, run)
    if found is None:
        console.print("changed since the previous good run: no previous good run to compare")
        return
    print_changes(console, f"run {found.previous_run} (previous good)", found.changes)
