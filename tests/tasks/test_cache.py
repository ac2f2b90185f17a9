"""The feature cache: a task's data is tokenised once, and what comes back is what ``load`` made."""
from __future__ import annotations

import os

import pytest

from diffprune.tasks import cache, get_task

ARGUMENTS = dict(max_train_examples=None, max_eval_examples=None, seed=0, doc_stride=32)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "features"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


def counting_loads(task, monkeypatch) -> list:
    calls = []
    load = task.load
    monkeypatch.setattr(task, "load", lambda *args, **kwargs: calls.append(1) or load(*args, **kwargs))
    return calls


def assert_same_data(cached, fresh):
    assert cached.train.columns == fresh.train.columns
    assert list(cached.evals) == list(fresh.evals)
    for name, eval_set in fresh.evals.items():
        other = cached.evals[name]
        assert other.dataset.columns == eval_set.dataset.columns
        for field in ("num_examples", "num_examples_total", "column", "metric_suffix", "labels", "examples",
                      "feature_example_index", "feature_offsets"):
            assert getattr(other, field) == getattr(eval_set, field), field
    for field in ("train_examples", "train_examples_total", "dev_examples", "dev_examples_total", "note",
                  "source", "details"):
        assert getattr(cached, field) == getattr(fresh, field), field
    batch = cached.collate([cached.train[i] for i in range(2)])
    assert batch.keys() == fresh.collate([fresh.train[i] for i in range(2)]).keys()


@pytest.mark.parametrize("task_name", ["sst2", "mrpc", "stsb", "mnli"])
def test_glue_is_tokenised_once_and_read_back_identical(task_name, fixture_glue_dir, tiny_tokenizer, cache_dir,
                                                        monkeypatch):
    task, data_cfg = get_task(task_name), {"glue_dir": str(fixture_glue_dir)}
    calls = counting_loads(task, monkeypatch)
    first = cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    second = cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    assert len(calls) == 1 and len(list((cache_dir / task_name).iterdir())) == 1
    assert_same_data(second, first)


def test_squad_windows_offsets_and_examples_come_back_identical(squad_folder, tiny_tokenizer, cache_dir,
                                                               monkeypatch):
    task, data_cfg = get_task("squad"), {"squad_dir": str(squad_folder)}
    calls = counting_loads(task, monkeypatch)
    first = cache.load_task_data(task, tiny_tokenizer, data_cfg, 96, **ARGUMENTS)
    second = cache.load_task_data(task, tiny_tokenizer, data_cfg, 96, **ARGUMENTS)
    assert len(calls) == 1
    assert_same_data(second, first)
    assert second.evals["dev"].feature_offsets[0][0] is None  # question tokens map to no context


def test_anything_that_changes_the_features_makes_a_new_entry(fixture_glue_dir, tiny_tokenizer, cache_dir,
                                                             monkeypatch):
    task, data_cfg = get_task("sst2"), {"glue_dir": str(fixture_glue_dir)}
    calls = counting_loads(task, monkeypatch)
    cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    cache.load_task_data(task, tiny_tokenizer, data_cfg, 16, **ARGUMENTS)  # another max_seq_length
    cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **{**ARGUMENTS, "max_train_examples": 2})
    train_file = fixture_glue_dir / "SST-2" / "train.tsv"
    train_file.write_text(train_file.read_text() + "a new row \t1\n")
    changed = cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    assert len(calls) == 4 and changed.train_examples_total == 6


def test_a_damaged_entry_is_rebuilt_not_trusted(fixture_glue_dir, tiny_tokenizer, cache_dir, monkeypatch):
    task, data_cfg = get_task("sst2"), {"glue_dir": str(fixture_glue_dir)}
    first = cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    (entry,) = (cache_dir / "sst2").iterdir()
    (entry / "train.input_ids.offsets.npy").write_bytes(b"not numpy")
    calls = counting_loads(task, monkeypatch)
    again = cache.load_task_data(task, tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    assert len(calls) == 1
    assert_same_data(again, first)


def test_without_the_variable_or_for_hub_data_nothing_is_cached(fixture_glue_dir, tiny_tokenizer, tmp_path,
                                                                monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    task = get_task("sst2")
    cache.load_task_data(task, tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 32, **ARGUMENTS)
    assert task.local_data_files({}) is None  # Hub data: nothing pins its content
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "features"))
    cache.load_task_data(task, tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 32, **ARGUMENTS)
    assert os.listdir(tmp_path / "features") == ["sst2"]


def test_racing_writers_both_end_with_one_complete_entry(fixture_glue_dir, tiny_tokenizer, cache_dir):
    task, data_cfg = get_task("sst2"), {"glue_dir": str(fixture_glue_dir)}
    data = task.load(tiny_tokenizer, data_cfg, 32, **ARGUMENTS)
    entry = cache_dir / "sst2" / "entry"
    cache.write_entry(entry, {"k": 1}, data)
    cache.write_entry(entry, {"k": 1}, data)  # the second writer finds the entry complete
    assert sorted(p.name for p in (cache_dir / "sst2").iterdir()) == ["entry"]
    key, read = cache.read_entry(entry, data.collate)
    assert key == {"k": 1}
    assert_same_data(read, data)
