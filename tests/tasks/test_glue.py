"""GLUE reading (every glue_data layout, the Hub path), features, evaluation and baselines."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffprune.tasks import DataUnavailableError, get_task, task_label_set
from diffprune.tasks import data as data_module

from .conftest import GLUE_ROWS, QQP_MALFORMED_TRAIN_LINES

FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE"}
LABEL_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2, "not_entailment": 1}


def expected_labels(task, rows):
    if task.kind == "regression":
        return [float(label) for *_, label in rows]
    return [LABEL_IDS[label] if label in LABEL_IDS else int(label) for *_, label in rows]


@pytest.mark.parametrize("name", list(FOLDERS))
def test_every_local_layout_reads_texts_and_labels(name, fixture_glue_dir):
    task = get_task(name)
    raw, source = task.read_raw({"glue_dir": str(fixture_glue_dir)})
    assert source == "local"
    for split, rows in GLUE_ROWS[FOLDERS[name]].items():
        assert raw[split].text_a == [row[0] for row in rows]   # stray quotes kept verbatim
        if rows[0][1] is None:
            assert raw[split].text_b is None
        else:
            assert raw[split].text_b == [row[1] for row in rows]
        assert raw[split].labels == expected_labels(task, rows)


def test_qqp_skips_malformed_rows_and_says_so(fixture_glue_dir, tiny_tokenizer):
    data = get_task("qqp").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=64)
    assert data.train_examples == len(GLUE_ROWS["QQP"]["train"])
    assert f"skipped {len(QQP_MALFORMED_TRAIN_LINES)} malformed train rows" in data.note


def test_malformed_rows_are_errors_elsewhere(fixture_glue_dir):
    path = fixture_glue_dir / "RTE" / "dev.tsv"
    path.write_text(path.read_text() + "9\tonly a premise\n")
    with pytest.raises(ValueError, match=r"RTE.dev\.tsv: line 5: malformed row"):
        get_task("rte").read_raw({"glue_dir": str(fixture_glue_dir)})


def test_load_builds_model_ready_features(fixture_glue_dir, tiny_tokenizer):
    data = get_task("rte").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=32)
    assert (data.train_examples, data.train_examples_total, data.dev_examples) == (5, 5, 3)
    assert data.note == "" and data.source == "local"
    assert list(data.evals) == ["dev"]
    item = data.train[0]
    assert set(item) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(item["input_ids"]) == 32   # the pair is longer than 32 characters: truncated
    assert item["input_ids"][0] == tiny_tokenizer.cls_token_id and item["labels"] == 1
    batch = data.collate([data.train[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 3 and batch["labels"].dtype == torch.long


def test_single_sentence_task_has_no_second_segment(fixture_glue_dir, tiny_tokenizer):
    data = get_task("sst2").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=128)
    item = data.evals["dev"].dataset[0]
    assert set(item["token_type_ids"]) == {0}
    assert tiny_tokenizer.decode(item["input_ids"], skip_special_tokens=True) == "a gorgeous film"


def test_stsb_labels_are_floats(fixture_glue_dir, tiny_tokenizer):
    data = get_task("stsb").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=64)
    batch = data.collate([data.train[i] for i in range(len(data.train))])
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [4.75, 0.0, 3.5]


def test_mnli_has_two_dev_sets(fixture_glue_dir, tiny_tokenizer):
    data = get_task("mnli").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=64)
    assert list(data.evals) == ["dev_matched", "dev_mismatched"]
    assert [e.column for e in data.evals.values()] == ["mnli_m", "mnli_mm"]
    assert data.evals["dev_matched"].labels == [0, 2, 1]
    assert data.dev_examples == 5


def test_subsampling_is_seeded_and_noted(fixture_glue_dir, tiny_tokenizer):
    cfg = {"glue_dir": str(fixture_glue_dir)}
    task = get_task("rte")
    first = task.load(tiny_tokenizer, cfg, 32, max_train_examples=3, max_eval_examples=2, seed=0)
    again = task.load(tiny_tokenizer, cfg, 32, max_train_examples=3, max_eval_examples=2, seed=0)
    assert (first.train_examples, first.train_examples_total) == (3, 5)
    assert (first.dev_examples, first.dev_examples_total) == (2, 3)
    assert first.train.columns == again.train.columns
    assert first.note == ("train subsampled to 3 of 5 examples (seed 0); "
                          "dev subsampled to 2 of 3 examples (seed 0)")
    seeds = {tuple(map(tuple, task.load(tiny_tokenizer, cfg, 32, max_train_examples=3, seed=s)
                       .train.column("input_ids"))) for s in range(6)}
    assert len(seeds) > 1


class ConstantClassifier(nn.Module):
    """Always predicts ``label`` (or the score ``label`` for regression)."""

    def __init__(self, label, num_labels):
        super().__init__()
        self.label, self.num_labels = label, num_labels

    def forward(self, input_ids, **_):
        if self.num_labels == 1:
            return {"logits": torch.full((len(input_ids), 1), float(self.label))}
        logits = torch.zeros(len(input_ids), self.num_labels)
        logits[:, self.label] = 1.0
        return {"logits": logits}


def test_evaluate_rte_by_hand(fixture_glue_dir, tiny_tokenizer):
    task = get_task("rte")
    data = task.load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 64)
    result = task.evaluate(ConstantClassifier(0, 2), data, batch_size=2)
    # dev labels: entailment, not_entailment, entailment -> predicting entailment is right 2 of 3 times.
    assert result == {"metrics": {"accuracy": pytest.approx(200 / 3)}, "scores": {"rte": pytest.approx(200 / 3)}}


def test_evaluate_mnli_reports_both_columns(fixture_glue_dir, tiny_tokenizer):
    task = get_task("mnli")
    data = task.load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 64)
    result = task.evaluate(ConstantClassifier(2, 3), data)   # contradiction: 1 of 3 matched, 1 of 2 mismatched
    assert result["metrics"] == {"accuracy_m": pytest.approx(100 / 3), "accuracy_mm": pytest.approx(50.0)}
    assert result["scores"] == {"mnli_m": pytest.approx(100 / 3), "mnli_mm": pytest.approx(50.0)}


def test_evaluate_mrpc_reports_f1_and_accuracy(fixture_glue_dir, tiny_tokenizer):
    task = get_task("mrpc")
    data = task.load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 64)
    result = task.evaluate(ConstantClassifier(1, 2), data)   # dev labels 1, 0: TP=1, FP=1 -> F1 = 2/3
    assert result["metrics"] == {"f1": pytest.approx(200 / 3), "accuracy": pytest.approx(50.0)}
    assert result["scores"] == {"mrpc": pytest.approx(200 / 3)}


def test_evaluate_with_a_real_model_matches_its_argmax(fixture_glue_dir, tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    task = get_task("cola")
    data = task.load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 64)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tiny_tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64))
    dev = data.evals["dev"]
    with torch.no_grad():
        model.eval()
        predictions = [int(model(**data.collate([dev.dataset[i]])).logits.argmax()) for i in range(len(dev))]
    from diffprune.tasks.metrics import matthews

    expected = matthews(predictions, dev.labels)
    assert task.evaluate(model, data, batch_size=2)["scores"]["cola"] == pytest.approx(expected, abs=1e-9)


def test_majority_baseline_uses_train_labels(fixture_glue_dir, tiny_tokenizer):
    cfg = {"glue_dir": str(fixture_glue_dir)}
    rte = get_task("rte")
    # train: 3 x not_entailment, 2 x entailment -> predict not_entailment; dev has 1 of 3.
    assert rte.majority_baseline(rte.load(tiny_tokenizer, cfg, 64))["scores"] == {"rte": pytest.approx(100 / 3)}
    cola = get_task("cola")
    assert cola.majority_baseline(cola.load(tiny_tokenizer, cfg, 64)) == {
        "metrics": {"matthews": 0.0}, "scores": {"cola": 0.0}}
    stsb = get_task("stsb")
    assert stsb.majority_baseline(stsb.load(tiny_tokenizer, cfg, 64)) == {
        "metrics": {"spearman": 0.0, "pearson": 0.0}, "scores": {"stsb": 0.0}}


def test_missing_task_folder_names_the_path(tmp_path, tiny_tokenizer):
    empty_glue_dir = tmp_path / "glue_data"
    empty_glue_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected the folder .*glue_data.RTE"):
        get_task("rte").load(tiny_tokenizer, {"glue_dir": str(empty_glue_dir)}, 64)


def test_missing_task_file_names_the_path(fixture_glue_dir, tiny_tokenizer):
    (fixture_glue_dir / "QNLI" / "train.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"QNLI.train\.tsv"):
        get_task("qnli").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, 64)


def test_offline_without_local_dir_says_what_to_set(monkeypatch, tiny_tokenizer):
    monkeypatch.delenv("GLUE_DIR", raising=False)

    def offline(path, config=None):
        raise ConnectionError("cannot reach huggingface.co")

    monkeypatch.setattr(data_module, "_hub_load_dataset", offline)
    with pytest.raises(DataUnavailableError) as error:
        get_task("rte").load(tiny_tokenizer, {"glue_dir": None}, 64)
    message = str(error.value)
    assert "GLUE_DIR" in message and "data.glue_dir" in message and "RTE/train.tsv" in message


def test_hub_source_maps_columns_and_splits(monkeypatch, tiny_tokenizer):
    import datasets

    monkeypatch.delenv("GLUE_DIR", raising=False)

    def split(n):
        return datasets.Dataset.from_dict({"premise": [f"premise {i}" for i in range(n)],
                                           "hypothesis": [f"hypothesis {i}" for i in range(n)],
                                           "label": [i % 3 for i in range(n)], "idx": list(range(n))})
    calls = []

    def fake_hub(path, config=None):
        calls.append((path, config))
        return datasets.DatasetDict({"train": split(6), "validation_matched": split(3),
                                     "validation_mismatched": split(2), "test_matched": split(1)})

    monkeypatch.setattr(data_module, "_hub_load_dataset", fake_hub)
    data = get_task("mnli").load(tiny_tokenizer, {}, 64)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.source == "hub"
    assert (data.train_examples, data.evals["dev_matched"].num_examples, data.evals["dev_mismatched"].num_examples) \
        == (6, 3, 2)
    assert data.evals["dev_matched"].labels == [0, 1, 2]
    text = tiny_tokenizer.decode(data.train[1]["input_ids"], skip_special_tokens=True)
    assert text.replace(" ", "") == "premise1hypothesis1"


# --- the real offline copy (GLUE_DIR) ------------------------------------------------------

REAL_COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
               "rte": (2490, 277)}


@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_glue_row_counts(name, glue_dir):
    raw, _ = get_task(name).read_raw({"glue_dir": glue_dir})
    assert (len(raw["train"]), len(raw["dev"])) == REAL_COUNTS[name]


def test_real_qnli_dev_count(glue_dir):
    from pathlib import Path

    task = get_task("qnli")
    dev = task.read_local_split(Path(glue_dir) / "QNLI" / "dev.tsv")
    assert len(dev) == 5463 and set(dev.labels) == {0, 1}


def test_real_rte_loads_end_to_end(glue_dir, tiny_tokenizer):
    task = get_task("rte")
    data = task.load(tiny_tokenizer, {"glue_dir": glue_dir}, 128, max_train_examples=100, seed=0)
    assert (data.train_examples, data.train_examples_total, data.dev_examples) == (100, 2490, 277)
    assert data.note == "train subsampled to 100 of 2490 examples (seed 0)"
    assert task.majority_baseline(data)["scores"]["rte"] > 45.0


def test_a_split_with_only_a_header_is_refused_before_training(fixture_glue_dir, tiny_tokenizer):
    """An SST-2 dev.tsv holding only its header trained fully, then failed with KeyError 'input_ids'."""
    dev = fixture_glue_dir / "SST-2" / "dev.tsv"
    dev.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=f"{dev} holds no data rows: the file is truncated or empty; restore it"):
        get_task("sst2").load(tiny_tokenizer, {"glue_dir": str(fixture_glue_dir)}, max_seq_length=32)


def test_the_label_set_a_stored_diff_records():
    assert task_label_set(get_task("rte")) == ["entailment", "not_entailment"]
    assert task_label_set(get_task("mnli")) == ["entailment", "neutral", "contradiction"]
    assert task_label_set(get_task("sst2")) == ["0", "1"]  # numeric labels: their indices
    assert task_label_set(get_task("stsb")) is None and task_label_set(get_task("squad")) is None
