"""Settings: one TOML file plus ``RUNWATCH_*`` environment variables.

The file is ``$RUNWATCH_CONFIG`` if set, else ``./runwatch.toml`` if it exists. Environment
variables override it: ``RUNWATCH_DATABASE_URL`` for a top-level key, and a double underscore
for a nested one, e.g. ``RUNWATCH_SCHEDULER__SLOTS=8``. Relative paths in the file are taken
relative to the file's own folder, so a deployment folder can be moved as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "RUNWATCH_CONFIG"
DEFAULT_CONFIG_NAME = "runwatch.toml"


class SchedulerSettings(BaseModel):
    """How the scheduler daemon plans, submits and retries."""

    tick_seconds: float = Field(1.0, gt=0, description="Longest sleep between two ticks.")
    poll_seconds: float = Field(
        0.05, gt=0, description="How often to look for new work between ticks."
    )
    slots: int = Field(
        0,
        ge=0,
        description=(
            "Thread slots for the executor; 0 = CPU count. The local executor runs one "
            "worker process per slot (logs under <work_root>/local) and keeps two rounds of "
            "jobs queued behind the slots, so the next job starts as soon as one ends (up "
            "to four while jobs of milliseconds run the queue dry between two rounds)."
        ),
    )
    order: str = Field("newest", pattern="^(newest|oldest)$", description="Keep-up order.")
    backoff_seconds: float = Field(10.0, ge=0, description="First retry delay; doubles.")
    backoff_max_seconds: float = Field(600.0, ge=0, description="Retry delay cap.")
    heartbeat_timeout_seconds: float = Field(
        120.0, gt=0, description="A running attempt silent this long is lost."
    )
    submit_grace_seconds: float = Field(
        60.0, gt=0, description="A submitted attempt not started this long is lost."
    )
    lease_seconds: float = Field(15.0, gt=0, description="Scheduler lease duration.")
    executor: str = Field("local", description="Executor plugin name.")


class IngestSettings(BaseModel):
    """Where file-ready messages come from."""

    dropbox: str = Field("", description="Dropbox directory watched by the scheduler.")
    dropbox_rescan_seconds: float = Field(
        30.0,
        gt=0,
        description="How often the dropbox is rescanned for semaphores the watcher missed.",
    )
    name_pattern: str = Field(
        r"^RUN\.(?P<run>\d+)\.(?P<detector>[A-Za-z0-9]+)\.(?P<stream>[A-Za-z0-9_-]+)\."
        r"(?P<ds>ds-\d+)\.(?P<trigger>[A-Za-z0-9_-]+)\.(?P<created>\d{14})\."
        r"(?P<sequence>\d+)_(?P<release>[A-Za-z0-9._-]+?)\.(?P<ext>\w+)$",
        description="Regex with named groups run, stream, sequence, created (YYYYmmddHHMMSS).",
    )
    amqp_url: str = Field("", description="AMQP broker URL; empty disables the AMQP source.")
    amqp_queue: str = Field("runwatch.files", description="Queue of file-ready messages.")
    api_tokens: list[str] = Field(
        default_factory=list, description="Bearer tokens accepted by POST /api/v1/messages."
    )


TREND_STATISTICS = ("mean", "rms", "mean_y", "rms_y", "entries", "integral")
"""What a ``[dqm] trends`` quantity takes of its histogram (``runwatch.dqm.trends``)."""


class DqmSettings(BaseModel):
    """How the DQM judges a run's merged histograms."""

    checks: str = Field("", description="Check file (YAML, see docs/dqm.md); empty: no checks.")
    every_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the scheduler's DQM thread registers finished merges, judges "
        "their runs and sweeps the alarms.",
    )
    cuts_preset: str = Field(
        "default",
        pattern="^(default|juno-test)$",
        description="PMT cuts to start from: default (dead < 1 %, hot > 99 %) or juno-test.",
    )
    cuts: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the preset's cuts: dead, hot, normal_low, normal_high, "
        "min_events (fractions, not percent).",
    )
    pmt_hits_histogram: str = Field(
        "pmt_hits", description="Per-PMT histogram of events in which each PMT fired."
    )
    n_events_histogram: str = Field("n_events", description="Histogram counting the events.")
    trends: dict[str, str] = Field(
        default_factory=lambda: {
            "energy_mean": "energy:mean",
            "vertex_r3_mean": "vertex_r3:mean",
            "vertex_z_mean": "vertex_z:mean",
        },
        description="Per-run trend quantities taken from histograms, name = "
        '"histogram:statistic" with statistic mean, rms, mean_y, rms_y, entries or integral '
        "(a run lacking the histogram has no point).",
    )

    @field_validator("trends")
    @classmethod
    def _trend_sources(cls, trends: dict[str, str]) -> dict[str, str]:
        for name, source in trends.items():
            histogram, _, statistic = source.rpartition(":")
            if not histogram or statistic not in TREND_STATISTICS:
                raise ValueError(
                    f"{name} = {source!r}: expected 'histogram:statistic' with statistic "
                    f"one of {', '.join(TREND_STATISTICS)}"
                )
        return trends


class AlarmSettings(BaseModel):
    """When alarms are raised and whom they tell."""

    no_progress_minutes: float = Field(
        30.0, gt=0, description="Alarm on an active run with no task progress for this long."
    )
    ack_hours: float = Field(
        8.0, gt=0, description="An acknowledgement expires after this; the alarm re-raises."
    )
    notifiers: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"kind": "log"}],
        description="Who is told: tables with kind = log | smtp | webhook and their options "
        "(see docs/dqm.md, Alarms); an optional name tells two of one kind apart.",
    )
    notify_retry_seconds: float = Field(
        60.0,
        ge=0,
        description="A notifier that failed is tried again after this long; the alarm "
        "stays pending meanwhile.",
    )
    notify_max_per_call: int = Field(
        20,
        gt=0,
        description="At most this many pending alarms are sent per scheduler tick, so a "
        "burst of alarms never holds the scheduler up for long.",
    )


class WebSettings(BaseModel):
    """Who may see and do what on the web site."""

    public_read: bool = Field(
        True, description="Read-only pages and API open to anyone; false: log in to read."
    )
    session_secret: str = Field(
        "",
        description="Key signing the login cookies (runwatch init writes one); empty: a "
        "random key per process, so logins end when the server restarts.",
    )
    session_hours: float = Field(12.0, gt=0, description="A login lasts this long.")
    cookie_secure: bool = Field(
        True, description="Send cookies over HTTPS only (browsers allow http://localhost)."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of the TLS reverse proxies whose "
        "client-certificate header is believed; from anyone else it is ignored.",
    )
    dn_header: str = Field(
        "X-SSL-Client-S-DN", description="Header carrying the verified client certificate's DN."
    )
    dn_roles: dict[str, str] = Field(
        default_factory=dict, description="Certificate DN -> role (viewer, shifter, expert, admin)."
    )
    cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long each server process reuses a recent-runs page it computed, "
        "for everyone asking for the same page (live updates carry changes meanwhile); "
        "0: compute every request.",
    )
    detector: str = Field(
        "juno",
        description="Whose PMT positions the PMT map draws: an entry point of the "
        "runwatch.detectors group (e.g. juno); empty: no map.",
    )


class HTCondorSettings(BaseModel):
    """The HTCondor executor (``scheduler.executor = "htcondor"``), through ``htcondor2``."""

    schedd: str = Field("", description="Name of the schedd to submit to; empty: the local one.")
    collector: str = Field(
        "",
        description="host:port of the collector that locates the schedd; empty: the "
        "pool's own (CONDOR_CONFIG).",
    )
    slots: int = Field(
        1000, ge=1, description="Thread slots runwatch may fill in the pool at once."
    )
    queue_ahead: int = Field(
        200,
        ge=0,
        description="Threads' worth of jobs kept idle in the queue beyond the slots (topped "
        "up once fewer than the slots' worth or half of it wait).",
    )
    accounting_group: str = Field(
        "", description="accounting_group of every job (a step's submit.htcondor may override)."
    )
    accounting_group_user: str = Field("", description="accounting_group_user of every job.")
    submit: dict[str, str] = Field(
        default_factory=dict,
        description="Extra submit-description lines for every job (e.g. requirements); a "
        "step's submit.htcondor adds to and overrides them.",
    )
    job_user: str = Field(
        "",
        description="Local user the jobs run as when it is not the scheduler's own (a "
        "scheduler running as root that submits with another identity's token): runwatch "
        "hands it the jobs' work and log folders and environment files. Empty: the "
        "scheduler's user, as usual.",
    )


class SlurmSettings(BaseModel):
    """The Slurm executor (``scheduler.executor = "slurm"``): sbatch, squeue, scontrol,
    scancel."""

    partition: str = Field("", description="Partition (sbatch --partition); empty: the default.")
    account: str = Field("", description="Account (sbatch --account); empty: none.")
    qos: str = Field("", description="Quality of service (sbatch --qos); empty: none.")
    slots: int = Field(
        1000, ge=1, description="Thread slots runwatch may fill in the cluster at once."
    )
    queue_ahead: int = Field(
        200,
        ge=0,
        description="Threads' worth of jobs kept pending beyond the slots (topped up once "
        "fewer than the slots' worth or half of it wait).",
    )
    sbatch_options: list[str] = Field(
        default_factory=list,
        description="Extra sbatch options for every job (e.g. --constraint=avx2); a step's "
        "submit.slurm adds to them.",
    )
    bin_dir: str = Field("", description="Folder of the Slurm commands; empty: found on PATH.")


class WorkerSettings(BaseModel):
    """How a job on a batch node starts the wrapper and reports how its attempt went."""

    command: str = Field(
        "",
        description="Command that runs runwatch on a worker node (e.g. a venv's bin/runwatch); "
        "empty: the scheduler's own Python with -m runwatch.",
    )
    report: str = Field(
        "database",
        pattern="^(database|http)$",
        description="database: the wrapper writes to the database itself (inside the "
        "firewall); http: it reports through the web server's API with a token that is good "
        "for its own attempt only (worker nodes outside the firewall).",
    )
    api_url: str = Field("", description="Base URL of runwatch's web server, for report = http.")
    token_secret_file: str = Field(
        "",
        description="File holding the secret that signs attempt tokens (shared by the "
        "scheduler and the web server); empty: <work_root>/secrets/attempt-token.key, "
        "made on first use.",
    )
    report_retry_seconds: float = Field(
        600.0,
        gt=0,
        description="How long a worker that cannot reach the server keeps its report and "
        "retries (with backoff) before giving up.",
    )

    @model_validator(mode="after")
    def _http_needs_a_server(self) -> WorkerSettings:
        # Caught when the file is read, not by a scheduler tick failing at its first job.
        if self.report == "http" and not self.api_url:
            raise ValueError('report = "http" needs api_url (the web server as nodes reach it)')
        return self


OUTPUT_SCHEMES = frozenset({"file", "root", "xroot", "roots", "xroots", "https", "http"})
"""URL schemes outputs can be stored to (``runwatch.storage.stage.stage_out``)."""


class StorageSettings(BaseModel):
    """Copies of inputs and outputs by URL (file://, root://, https://)."""

    retries: int = Field(3, ge=0, description="Retries of a failed copy (with backoff).")
    backoff_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles.")
    timeout_seconds: float = Field(
        600.0, gt=0, description="Longest a single copy may take before it counts as failed."
    )
    output_root: str = Field(
        "",
        description="Where step outputs are stored, as a URL: <output_root>/<stream>/<run>/"
        "<step>/ (file:///..., root://host//path/ for EOS, https://host/path/ for a WebDAV "
        "store); empty: data_root.",
    )
    ca_file: str = Field(
        "",
        description="CA certificates (PEM) that https:// storage servers are checked "
        "against, as the worker nodes see the file; empty: the system's.",
    )
    cache_mb: int = Field(
        2048,
        ge=0,
        description="Largest size of <work_root>/cache, where the DQM service and the web "
        "server keep copies of outputs stored on root:// or https:// (oldest removed first).",
    )

    @field_validator("output_root")
    @classmethod
    def _a_storage_url(cls, value: str) -> str:
        # Caught when the file is read, not by the first job failing to store its outputs.
        value = value.strip()
        if not value or value.startswith("/"):
            return value
        scheme, separator, rest = value.partition("://")
        if not separator or scheme.lower() not in OUTPUT_SCHEMES or not rest.strip("/"):
            raise ValueError(
                f"[storage] output_root = {value!r} is not an absolute path or a URL of "
                f"{', '.join(s + '://' for s in sorted(OUTPUT_SCHEMES))}"
            )
        return value


class Settings(BaseSettings):
    """All of runwatch's settings."""

    model_config = SettingsConfigDict(
        env_prefix="RUNWATCH_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = Field(
        "sqlite:///runwatch.db", description="SQLAlchemy URL of the one database."
    )
    data_root: str = Field("data", description="Where step outputs are stored.")
    work_root: str = Field("work", description="Per-attempt work directories and logs.")
    pipelines: str = Field("pipelines", description="Folder of pipeline YAML files.")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    dqm: DqmSettings = Field(default_factory=DqmSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    htcondor: HTCondorSettings = Field(default_factory=HTCondorSettings)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def resolve(self, base: Path) -> Settings:
        """Make the relative paths absolute against ``base``."""
        data: dict[str, Any] = self.model_dump()
        for key in ("data_root", "work_root", "pipelines"):
            data[key] = str((base / data[key]).resolve())
        if data["ingest"]["dropbox"]:
            data["ingest"]["dropbox"] = str((base / data["ingest"]["dropbox"]).resolve())
        if data["worker"]["token_secret_file"]:
            secret = base / data["worker"]["token_secret_file"]
            data["worker"]["token_secret_file"] = str(secret.resolve())
        if data["dqm"]["checks"]:
            data["dqm"]["checks"] = str((base / data["dqm"]["checks"]).resolve())
        url: str = data["database_url"]
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            data["database_url"] = prefix + str((base / url[len(prefix) :]).resolve())
        return Settings.model_construct(
            **{
                **data,
                "scheduler": SchedulerSettings(**data["scheduler"]),
                "ingest": IngestSettings(**data["ingest"]),
                "dqm": DqmSettings(**data["dqm"]),
                "alarms": AlarmSettings(**data["alarms"]),
                "web": WebSettings(**data["web"]),
                "htcondor": HTCondorSettings(**data["htcondor"]),
                "slurm": SlurmSettings(**data["slurm"]),
                "worker": WorkerSettings(**data["worker"]),
                "storage": StorageSettings(**data["storage"]),
            }
        )


def config_path() -> Path | None:
    """The TOML file in force, or None."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV}={env}: no such file")
        return path
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def load_settings() -> Settings:
    """Read the settings in force, with paths made absolute."""
    path = config_path()
    base = path.parent if path is not None else Path.cwd()
    return Settings().resolve(base)
