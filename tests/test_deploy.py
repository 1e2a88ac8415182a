"""The example deployment files in deploy/ (docs/deploy.md) are valid as shipped: the
configurations load with every setting known, the pipelines parse, the service units
start commands that exist, and the reverse proxy passes the header runwatch reads."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from runwatch.config import CONFIG_ENV, Settings
from runwatch.workflow.pipeline_file import load_pipeline

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
GUIDE = DEPLOY.parent / "docs" / "deploy.md"
CONFIGS = sorted(DEPLOY.glob("*.toml"))
UNITS = sorted(DEPLOY.glob("*.service"))


def _settings(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(CONFIG_ENV, str(path))
    for name in [n for n in os.environ if n.startswith("RUNWATCH_")]:
        if name != CONFIG_ENV:
            monkeypatch.delenv(name)
    return Settings()


def test_there_are_examples_for_both_batch_systems() -> None:
    assert {p.name for p in CONFIGS} == {"runwatch.toml", "runwatch-slurm.toml"}
    assert {p.name for p in UNITS} == {"runwatch-scheduler.service", "runwatch-web.service"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_configuration_loads_with_every_setting_known(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(path, monkeypatch)  # extra="forbid": a misspelt key fails here
    assert settings.scheduler.executor in {"htcondor", "slurm"}
    assert settings.database_url.split("+")[0] in {"postgresql", "mysql"}
    assert settings.web.session_secret, "a site must sign its cookies with a fixed key"


def test_the_htcondor_site_reports_over_https_from_outside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(DEPLOY / "runwatch.toml", monkeypatch)
    assert settings.worker.report == "http"
    assert settings.worker.api_url.startswith("https://")
    assert settings.htcondor.accounting_group
    assert settings.web.trusted_proxies == ["127.0.0.1"]
    roles = set(settings.web.dn_roles.values())
    assert roles and roles <= {"viewer", "shifter", "expert", "admin"}


def test_the_batch_pipeline_parses_with_its_batch_settings() -> None:
    pipeline = load_pipeline(DEPLOY / "pipelines" / "juno-batch.yaml").pipeline
    rec = pipeline.steps["rec"]
    assert rec.disk_mb == 10 * 1024
    assert rec.submit["slurm"] == ["--qos=keepup"]
    assert rec.submit["htcondor"]["+JobFlavour"] == '"longlunch"'


def _exec_lines(unit: Path) -> list[list[str]]:
    lines = re.findall(r"^ExecStart(?:Pre)?=(.+)$", unit.read_text(), re.MULTILINE)
    assert lines, f"{unit.name} starts nothing"
    return [shlex.split(line) for line in lines]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_service_unit_runs_real_runwatch_commands(unit: Path, app: typer.Typer) -> None:
    for argv in _exec_lines(unit):
        assert Path(argv[0]).name == "runwatch", argv
        # --help after the arguments: Typer checks the command and every option given
        result = CliRunner().invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, (argv, result.output)
    assert f"{CONFIG_ENV}=/etc/runwatch/runwatch.toml" in unit.read_text()


def test_the_proxy_passes_the_dn_header_runwatch_reads_to_the_port_it_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(DEPLOY / "runwatch.toml", monkeypatch)
    nginx = (DEPLOY / "nginx-runwatch.conf").read_text()
    headers = re.findall(r"proxy_set_header\s+(\S+)\s+\$client_dn;", nginx)
    assert headers and set(headers) == {settings.web.dn_header}
    # the DN is only ever the one nginx verified, never one the client sent
    assert "ssl_verify_client      optional;" in nginx
    assert nginx.count("if ($ssl_client_verify = SUCCESS)") == len(headers)
    web = (DEPLOY / "runwatch-web.service").read_text()
    port = re.search(r"--port (\d+)", web)
    assert port is not None
    assert set(re.findall(r"proxy_pass http://127\.0\.0\.1:(\d+);", nginx)) == {port.group(1)}


def test_the_guide_names_every_example_file() -> None:
    guide = GUIDE.read_text()
    for path in [*CONFIGS, *UNITS, DEPLOY / "nginx-runwatch.conf", *DEPLOY.glob("pipelines/*")]:
        assert str(path.relative_to(DEPLOY.parent)) in guide, path.name
