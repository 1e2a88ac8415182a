"""The DAQ simulator: raw files, names, messages, truth, and the engine's intake."""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from runwatch.catalogue.models import File, Run
from runwatch.config import CONFIG_ENV, IngestSettings, Settings
from runwatch.db import Database
from runwatch.experiments.juno import daqsim, detector, formats, rootio
from runwatch.experiments.juno.constants import read_constants
from runwatch.experiments.juno.daqsim import DaqConfig, DaqSimError, simulate_run
from runwatch.ingest.dropbox import scan_once
from runwatch.ingest.models import MessageStatus
from runwatch.ingest.names import message_from_name
from runwatch.ingest.schema import parse_message
from runwatch.storage.checksum import adler32_file
from runwatch.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

START = dt.datetime(2025, 8, 26, 12, 0, tzinfo=dt.UTC)
PATTERN = IngestSettings().name_pattern


def config(out: Path, **changes: object) -> DaqConfig:
    values: dict[str, object] = {
        "run": 1234,
        "out_dir": out,
        "files": 3,
        "events_per_file": 40,
        "start": START,
        "waves": False,
    }
    values.update(changes)
    return DaqConfig(**values)  # type: ignore[arg-type]


def test_a_run_is_raw_files_announced_by_semaphores(tmp_path: Path) -> None:
    written = simulate_run(config(tmp_path / "dropbox", dead=3, hot=2))
    assert [f.path.parent for f in written] == [tmp_path / "dropbox"] * 3
    semaphores = sorted((tmp_path / "dropbox").glob("*.done"))
    assert semaphores == [f.path.with_name(f.path.name + ".done") for f in written]
    ids: list[int] = []
    for sequence, file in enumerate(written, 1):
        message = parse_message(file.path.with_name(file.path.name + ".done").read_text())
        assert message.model_dump(mode="json") == parse_message(
            json.dumps(file.message)
        ).model_dump(mode="json")
        assert (message.run, message.stream, message.sequence) == (1234, "Physics", sequence)
        assert message.url == file.path.as_uri()
        assert (message.size, message.adler32) == (
            file.path.stat().st_size,
            adler32_file(file.path),
        )
        assert message.end_of_run is (sequence == 3)
        assert message.metadata["events"] == 40
        named = message_from_name(file.path.name, PATTERN)
        assert (named["run"], named["stream"], named["sequence"]) == (1234, "Physics", sequence)
        assert named["metadata"]["trigger"] == "global_trigger"
        assert named["metadata"]["release"] == "J25.5.0"
        assert dt.datetime.fromisoformat(named["created"]) == message.created.replace(microsecond=0)
        (chunk,) = rootio.iterate(file.path, formats.RAW_TREE, formats.RAW_BRANCHES)
        assert len(chunk) == 40 and set(chunk.trigger_type) == {1}
        ids.extend(chunk.event_id)
        assert np.all(np.diff(chunk.timestamp_ns) > 0)
    assert ids == list(range(120))
    assert not list((tmp_path / "dropbox").glob("*.part")) + list((tmp_path / "dropbox").glob(".*"))


def test_truth_and_true_constants_stay_out_of_the_dropbox(tmp_path: Path) -> None:
    cfg = config(tmp_path / "dropbox", files=2, hot=(11, 12))
    written = simulate_run(cfg)
    truth_dir = tmp_path / "dropbox" / "truth"
    for file in written:
        assert file.truth_path == truth_dir / f"{file.path.name}.truth.root"
        (truth,) = rootio.iterate(file.truth_path, formats.TRUTH_TREE, formats.TRUTH_BRANCHES)
        (raw,) = rootio.iterate(file.path, formats.RAW_TREE, ["event_id"])
        assert list(truth.event_id) == list(raw.event_id)
        assert np.all(truth.n_pe > 0)
    constants = read_constants(daqsim.constants_path(cfg), detector.N_PMT)
    pmts = daqsim.detector_truth(cfg, detector.N_PMT)
    assert np.allclose(constants.gain_adc_per_pe, pmts.gain_adc_per_pe, rtol=1e-5)
    assert np.allclose(constants.time_offset_ns, pmts.time_offset_ns, atol=1e-4)
    # the detector is the seed's: another run has the same constants, other events
    other = daqsim.detector_truth(config(tmp_path, run=99), detector.N_PMT)
    assert np.array_equal(other.gain_adc_per_pe, pmts.gain_adc_per_pe)


def test_raw_events_are_about_60_kb_with_their_waveforms(tmp_path: Path) -> None:
    (file,) = simulate_run(config(tmp_path, files=1, events_per_file=200, waves=True))
    per_event = file.path.stat().st_size / 200
    assert 50_000 < per_event < 70_000
    (chunk,) = rootio.iterate(file.path, formats.RAW_TREE, ["pmt_id", "wave"])
    counts = np.asarray([len(w) for w in chunk.wave])
    assert np.array_equal(
        counts, detector.WAVE_SAMPLES * np.asarray([len(p) for p in chunk.pmt_id])
    )


def test_a_calib_run_has_calib_triggers_of_a_source_at_the_centre(tmp_path: Path) -> None:
    (file,) = simulate_run(config(tmp_path, stream="Calib", files=1))
    assert ".Calib.ds-2.calib_trigger." in file.path.name
    (raw,) = rootio.iterate(file.path, formats.RAW_TREE, ["trigger_type"])
    assert set(raw.trigger_type) == {2}
    (truth,) = rootio.iterate(file.truth_path, formats.TRUTH_TREE, ["x_mm", "energy_mev"])
    assert not np.any(truth.x_mm) and np.allclose(truth.energy_mev, 2.506)


def test_the_same_configuration_writes_the_same_events(tmp_path: Path) -> None:
    first = simulate_run(config(tmp_path / "a", files=1))
    second = simulate_run(config(tmp_path / "b", files=1))
    assert first[0].path.name == second[0].path.name
    a, b = (next(rootio.iterate(f[0].path, formats.RAW_TREE, ["adc"])) for f in (first, second))
    assert a.adc.tolist() == b.adc.tolist()


def test_real_time_keeps_to_the_trigger_rate(tmp_path: Path) -> None:
    started = time.monotonic()
    (file,) = simulate_run(
        config(tmp_path, files=1, events_per_file=60, rate_hz=200.0, real_time=True)
    )
    elapsed = time.monotonic() - started
    metadata = file.message["metadata"]
    span = dt.datetime.fromisoformat(metadata["last_event_time"]) - START
    assert elapsed >= span.total_seconds() - 0.01
    assert 0.15 < span.total_seconds() < 0.5  # 60 events at 200 Hz


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"run": 0}, "run must be"),
        ({"stream": "Phys.ics"}, "stream"),
        ({"release": "J25 5"}, "release"),
        ({"post_url": "http://x"}, "token"),
        ({"dead": 5, "hot": detector.N_PMT}, "cannot make"),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, object], words: str
) -> None:
    with pytest.raises(DaqSimError, match=words):
        simulate_run(config(tmp_path / "out", **changes))
    assert not list((tmp_path / "out").glob("*.rtraw"))


def test_the_dropbox_accepts_the_run_and_learns_its_end(settings: Settings, db: Database) -> None:
    dropbox = Path(settings.ingest.dropbox)
    simulate_run(config(dropbox, run=77))
    receipts = scan_once(settings, db)
    assert [r.status for r in receipts] == [MessageStatus.ACCEPTED] * 3
    with db.session() as session:
        run = session.scalars(sa.select(Run).where(Run.number == 77)).one()
        files = session.scalars(sa.select(File).order_by(File.sequence)).all()
        assert (run.n_files, run.expected_files) == (3, 3)
        assert run.end_of_run_at is not None
        assert [f.meta["events"] for f in files] == [40, 40, 40]
        assert all(Path(f.url.removeprefix("file://")).is_file() for f in files)


def test_messages_can_be_posted_to_the_http_intake(
    tmp_path: Path, settings: Settings, db: Database
) -> None:
    cfg = config(
        tmp_path / "raw", run=78, files=2, post_url="http://testserver", token="test-token"
    )
    with TestClient(create_app(settings, db)) as client:
        written = simulate_run(cfg, http=client)
    assert not list((tmp_path / "raw").glob("*.done"))
    with db.session() as session:
        names = session.scalars(sa.select(File.name).order_by(File.sequence)).all()
    assert names == [f.path.name for f in written]
    wrong = config(tmp_path / "raw2", run=79, files=1, post_url="http://testserver", token="bad")
    with TestClient(create_app(settings, db)) as client, pytest.raises(DaqSimError, match="401"):
        simulate_run(wrong, http=client)


def test_the_command_writes_a_run_and_prints_its_files(
    tmp_path: Path, app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runwatch.toml here, and none named by the environment
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("RUNWATCH_INGEST__DROPBOX", raising=False)
    runner = CliRunner()
    args = ["juno", "daqsim", "--run", "5", "--events", "30", "--files", "2", "--quiet"]
    result = runner.invoke(app, [*args, "--out", "box", "--dead-ids", "1,2", "--hot", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.split()
    assert len(lines) == 2 and all(Path(line).is_file() for line in lines)
    assert "RUN.5.JUNODAQ.Physics" in lines[0]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 1
    assert "no --out given and no ingest.dropbox configured" in missing.output
    bad = runner.invoke(app, [*args, "--out", "box", "--start", "2025-08-26T12:00:00"])
    assert bad.exit_code == 1 and "time zone" in bad.output
    help_text = runner.invoke(app, ["juno", "daqsim", "--help"])
    assert help_text.exit_code == 0 and "--events" in help_text.output
