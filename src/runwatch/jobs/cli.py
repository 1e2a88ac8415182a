"""``runwatch job``: the job wrapper's command, started by executors on worker nodes."""

from __future__ import annotations

from pathlib import Path

import typer

job_app = typer.Typer(
    name="job",
    help="The job wrapper that executors start on worker nodes (not run by hand).",
    no_args_is_help=True,
)


@job_app.command("run")
def run(
    attempt: int = typer.Argument(..., help="Id of the attempt to run."),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Database URL (default: $RUNWATCH_DATABASE_URL; without either, the job "
        "reports through the web server named by $RUNWATCH_API_URL with the token in "
        "$RUNWATCH_ATTEMPT_TOKEN).",
    ),
) -> None:
    """Run one attempt: claim it, stage in, run the step, stage out, record the outcome.

    Started by executors, not by hand: the scheduler renders the attempt's job and submits
    this command; running it yourself for an attempt the scheduler gave up does nothing.
    """
    # Imported here so that `runwatch --help` does not pay for the wrapper's imports.
    from runwatch.jobs.wrapper import run_from_url

    raise typer.Exit(run_from_url(attempt, db))


@job_app.command("flush")
def flush(
    paths: list[Path] = typer.Argument(
        ..., help="Kept reports (runwatch-report.json) or the work directories holding them."
    ),
) -> None:
    """Deliver job reports kept on a worker node that could not reach the web server.

    Exit code 0 when every report was answered (recorded, or refused because the attempt
    had ended otherwise), 3 when the server still cannot be reached (the files stay).
    """
    from runwatch.jobs.report import main

    raise typer.Exit(main([str(path) for path in paths]))


def register(app: typer.Typer) -> None:
    """Add this feature's commands to ``app``."""
    app.add_typer(job_app, name="job")
