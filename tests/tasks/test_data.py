"""Source resolution, TSV reading, seeded subsampling and the offline error."""
from __future__ import annotations

import pytest

from diffprune.tasks import data


def test_config_directory_wins_over_environment(tmp_path, monkeypatch):
    configured, from_env = tmp_path / "a", tmp_path / "b"
    configured.mkdir(), from_env.mkdir()
    monkeypatch.setenv("GLUE_DIR", str(from_env))
    assert data.local_dir({"glue_dir": str(configured)}, "glue_dir", "GLUE_DIR") == configured
    assert data.local_dir({"glue_dir": None}, "glue_dir", "GLUE_DIR") == from_env
    monkeypatch.delenv("GLUE_DIR")
    assert data.local_dir({}, "glue_dir", "GLUE_DIR") is None


def test_configured_directory_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUAD_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$SQUAD_DIR points to .*missing"):
        data.local_dir(None, "squad_dir", "SQUAD_DIR")


def test_read_tsv_keeps_stray_quotes_and_drops_the_bom(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text('\ufeffQuality\ttext\n1\t" opens a quote\n0\tnever closed "\n', encoding="utf-8")
    rows = data.read_tsv(path)
    assert rows == [["Quality", "text"], ["1", '" opens a quote'], ["0", 'never closed "']]


def test_subsampling_is_seeded_sorted_and_optional():
    first = data.subsample_indices(100, 10, seed=0)
    assert first == data.subsample_indices(100, 10, seed=0)
    assert first == sorted(first) and len(set(first)) == 10
    assert first != data.subsample_indices(100, 10, seed=1)
    assert data.subsample_indices(100, None, seed=0) is None
    assert data.subsample_indices(100, 100, seed=0) is None
    with pytest.raises(ValueError):
        data.subsample_indices(100, 0, seed=0)
    assert data.subsample_note("train", 8000, 67349, 0) == "train subsampled to 8000 of 67349 examples (seed 0)"


def test_hub_failure_says_what_to_set(monkeypatch):
    def offline(path, config=None):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(data, "_hub_load_dataset", offline)
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_hub_dataset("nyu-mll/glue", "rte", "set GLUE_DIR")
    assert "nyu-mll/glue (rte)" in str(error.value) and "set GLUE_DIR" in str(error.value)
    assert isinstance(error.value.__cause__, ConnectionError)
