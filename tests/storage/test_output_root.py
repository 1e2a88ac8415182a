"""``[storage] output_root``: checked when the configuration is read, and the folder URLs
the scheduler renders from it; remote inputs staged at a path that tells their URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from runwatch.config import CONFIG_ENV, load_settings
from runwatch.storage.urls import folder_url, staged_path, staged_url


def use_output_root(value: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a configuration file with ``[storage] output_root = value`` the one in force."""
    config = folder / "runwatch.toml"
    config.write_text(f'[storage]\noutput_root = "{value}"\n')
    monkeypatch.setenv(CONFIG_ENV, str(config))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/srv/keepup/data",
        "file:///srv/keepup/data/",
        "root://eos.example//eos/juno/keepup/",
        "xroots://eos.example:1094//eos/juno/keepup",
        "https://store.example:8443/juno/keepup/",
        "http://127.0.0.1:8080/dav",
    ],
)
def test_output_root_accepts_the_schemes_outputs_can_go_to(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_output_root(value, tmp_path, monkeypatch)
    assert load_settings().storage.output_root == value


@pytest.mark.parametrize(
    "value", ["s3://bucket/keepup/", "relative/data", "root://", "gsiftp://se.example/x"]
)
def test_another_output_root_is_refused_naming_the_setting(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_output_root(value, tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"\[storage\] output_root = .* is not an absolute path"):
        load_settings()


def test_step_folders_under_each_kind_of_root() -> None:
    parts = ("Physics", "42", "rec")
    assert folder_url("/srv/data", parts) == "file:///srv/data/Physics/42/rec/"
    assert folder_url("file:///srv/my%20data/", parts) == "file:///srv/my%20data/Physics/42/rec/"
    assert (
        folder_url("root://eos.example//eos/juno/", parts)
        == "root://eos.example//eos/juno/Physics/42/rec/"
    )
    # Web servers get %-encoded names; XRootD takes them literally.
    assert folder_url("https://s.example/dav", ("Cosmic Muon", "1", "rec")) == (
        "https://s.example/dav/Cosmic%20Muon/1/rec/"
    )
    assert folder_url("root://e//d", ("Cosmic Muon",)) == "root://e//d/Cosmic Muon/"


@pytest.mark.parametrize(
    "url",
    [
        "root://eos.example:1094//eos/juno/Physics/42/hist/f.hist.root",
        "https://store.example:8443/juno/Physics/42/hist/a%20b.root",
    ],
)
def test_a_staged_inputs_path_tells_its_url(url: str, tmp_path: Path) -> None:
    inputs = tmp_path / "task-1-attempt-1" / "inputs"
    path = staged_path(url, inputs)
    assert path.is_relative_to(inputs) and path.name in url.replace("%20", " ")
    assert staged_url(path, inputs) == url
    assert staged_url(tmp_path / "elsewhere" / "f.root", inputs) is None


def test_a_staged_path_stays_in_its_folder(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    path = staged_path("https://evil.example/a/%2e%2e/../../../etc/passwd", inputs)
    assert path.is_relative_to(inputs / "https" / "evil.example")
