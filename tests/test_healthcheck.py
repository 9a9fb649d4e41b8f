"""The image's HEALTHCHECK (`python -m papersearch.serving.healthcheck`): why it fails, in one
line on stderr (Docker keeps it in the container's health log)."""

from __future__ import annotations

import pytest

from papersearch.serving import healthcheck


@pytest.mark.parametrize("config", ["no-such-settings.yaml", "."])
def test_a_settings_file_it_cannot_read_is_one_line(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], config: str) -> None:
    """A missing file ended in a 24-line traceback; a folder was already one line."""
    folder = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("PAPERSEARCH_CONFIG", str(folder / config))
    assert healthcheck.main() == 1
    said = capsys.readouterr().err
    assert said.startswith("papersearch healthcheck: settings file ") and said.count("\n") == 1
