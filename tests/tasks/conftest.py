"""Fixtures for the task tests: the tiny tokenizer and small data folders written per test.

The GLUE fixture reproduces each task's real glue_data layout (header or not, column
positions, the MRPC byte-order mark, stray quote characters, QQP's malformed rows) with a
handful of rows, so every reader runs without the real data.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# Rows per task and split: (text_a, text_b, label-as-written).
GLUE_ROWS = {
    "CoLA": {
        "train": [("The sailors rode the breeze clear of the rocks.", None, "1"),
                  ("The more you eat, the the fatter.", None, "0"),
                  ("He said \"hello.", None, "1"),   # stray quote
                  ("Bill ate the peaches.", None, "1")],
        "dev": [("Fred watered the plants flat.", None, "1"), ("Them left.", None, "0")],
    },
    "SST-2": {
        "train": [("it 's a charming and often affecting journey . ", None, "1"),
                  ("unflinchingly bleak and desperate ", None, "0"),
                  ("the \" best \" film of the year ", None, "1"),
                  ("a \"mess ", None, "0"),
                  ("good fun ", None, "1")],
        "dev": [("a gorgeous film ", None, "1"), ("\" dull ", None, "0"), ("fine ", None, "1")],
    },
    "MRPC": {
        "train": [("He said the pie business doesn 't fit .", "\" The pie business does not fit .", "1"),
                  ("Magnarelli said Racicot hated it .", "His wife said he was \" 100 percent behind .", "0"),
                  ("The stock rose .", "Shares went up .", "1")],
        "dev": [("A cat sat .", "A cat was sitting .", "1"), ("It rained .", "The sun shone .", "0")],
    },
    "STS-B": {
        "train": [("A man is dancing.", "A man wearing a hat is dancing.", "4.750"),
                  ("A child rides a horse.", "A plane takes off.", "0.000"),
                  ("Two dogs play.", "Dogs are playing.", "3.500")],
        "dev": [("A woman sings.", "A woman is singing.", "5.000"), ("A man cuts bread.", "A cat sleeps.", "0.250"),
                ("Kids run.", "Children are running outside.", "4.000")],
    },
    "QQP": {
        "train": [("How do I learn Python?", "What is the best way to learn Python?", "1"),
                  ("Why is the sky blue?", "How tall is Everest?", "0"),
                  ("What is \"love\"?", "What does love mean?", "1")],
        "dev": [("How old is the moon?", "What is the age of the moon?", "1"),
                ("Is tea healthy?", "Can dogs swim?", "0")],
    },
    "MNLI": {
        "train": [("The cat sat on the mat.", "A cat is sitting.", "entailment"),
                  ("The cat sat on the mat.", "The dog sat on the mat.", "contradiction"),
                  ("He went to the store.", "He bought milk.", "neutral"),
                  ("She \"won\" the race.", "She lost.", "contradiction")],
        "dev_matched": [("It is raining.", "It is wet outside.", "entailment"),
                        ("It is raining.", "It is sunny.", "contradiction"),
                        ("I saw a film.", "The film was long.", "neutral")],
        "dev_mismatched": [("The report was late.", "The report was on time.", "contradiction"),
                           ("The senator spoke.", "Someone spoke.", "entailment")],
    },
    "QNLI": {
        "train": [("What came into force?", "The new constitution came into force.", "entailment"),
                  ("What is the first city?", "The tributaries are the Ill and the Main.", "not_entailment"),
                  ("Who wrote it?", "It was written by \"Smith.", "entailment")],
        "dev": [("Where is Paris?", "Paris is in France.", "entailment"),
                ("When was it built?", "It is red.", "not_entailment")],
    },
    "RTE": {
        "train": [("Dana Reeve died of lung cancer.", "Christopher Reeve had an accident.", "not_entailment"),
                  ("Bacteria mutate faster than antibiotics.", "Bacteria is winning.", "entailment"),
                  ("The \"plan\" failed.", "The plan succeeded.", "not_entailment"),
                  ("Rome is in Italy.", "Rome is a city.", "entailment"),
                  ("He sold his car.", "He owns a car.", "not_entailment")],
        "dev": [("Oil prices rose.", "Oil became more expensive.", "entailment"),
                ("The team lost.", "The team won the cup.", "not_entailment"),
                ("A dog barked.", "An animal made a sound.", "entailment")],
    },
}

# Malformed QQP train rows the reader must skip (as the GLUE reference code does).
QQP_MALFORMED_TRAIN_LINES = ["201359\t303345\t303346\tHow can I do this?\t", "5\t6\t7\tonly one question"]


def _row(folder: str, index: int, text_a: str, text_b: str | None, label: str, split: str) -> list[str]:
    if folder == "CoLA":
        return ["gj04", label, "" if label == "1" else "*", text_a]
    if folder == "SST-2":
        return [text_a, label]
    if folder == "MRPC":
        return [label, str(1000 + index), str(2000 + index), text_a, text_b]
    if folder == "STS-B":
        return [str(index), "main-captions", "MSRvid", "2012test", f"{index:04d}", "none", "none",
                text_a, text_b, label]
    if folder == "QQP":
        return [str(index), str(2 * index + 1), str(2 * index + 2), text_a, text_b, label]
    if folder == "MNLI":
        annotator_labels = [label] if split == "train" else [label] * 5
        return [str(index), str(31193 + index), f"{31193 + index}n", "fiction", f"( {text_a} )",
                f"( {text_b} )", f"(ROOT {text_a})", f"(ROOT {text_b})", text_a, text_b,
                *annotator_labels, label]
    return [str(index), text_a, text_b, label]  # QNLI, RTE


def _header(folder: str, split: str) -> list[str] | None:
    if folder == "CoLA":
        return None
    if folder == "SST-2":
        return ["sentence", "label"]
    if folder == "MRPC":
        return ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]   # the real BOM
    if folder == "STS-B":
        return ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                "sentence1", "sentence2", "score"]
    if folder == "QQP":
        return ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    if folder == "MNLI":
        annotators = ["label1"] if split == "train" else [f"label{i}" for i in range(1, 6)]
        return ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *annotators, "gold_label"]
    if folder == "QNLI":
        return ["index", "question", "sentence", "label"]
    return ["index", "sentence1", "sentence2", "label"]


def write_glue_dir(root: Path) -> Path:
    """A glue_data folder with every task's layout; returns it."""
    for folder, splits in GLUE_ROWS.items():
        (root / folder).mkdir(parents=True)
        for split, rows in splits.items():
            lines = []
            header = _header(folder, split)
            if header:
                lines.append("\t".join(header))
            lines += ["\t".join(_row(folder, i, *row, split)) for i, row in enumerate(rows)]
            if folder == "QQP" and split == "train":
                lines[2:2] = QQP_MALFORMED_TRAIN_LINES
            (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def fixture_glue_dir(tmp_path) -> Path:
    return write_glue_dir(tmp_path / "glue_data")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from diffprune.tiny_models import build_tiny_tokenizer

    return build_tiny_tokenizer()


LONG_CONTEXT = " ".join(f"Sentence {i} talks about topic {i} in some detail." for i in range(12))


NORMANS = "The Normans were the people who gave their name to Normandy, a region in France."


def squad_articles() -> list[dict]:
    """Two articles: a short context, and one long context that needs several windows, with
    answers near the start, the middle and the end."""
    return [
        {"title": "Normans", "paragraphs": [
            {"context": NORMANS,
             "qas": [{"id": "q1", "question": "In what country is Normandy located?",
                      "answers": [{"text": "France", "answer_start": NORMANS.index("France")},
                                  {"text": "France.", "answer_start": NORMANS.index("France")}]},
                     {"id": "q2", "question": "Who gave their name to Normandy?",
                      "answers": [{"text": "The Normans", "answer_start": 0}]}]},
        ]},
        {"title": "Long", "paragraphs": [
            {"context": LONG_CONTEXT,
             "qas": [{"id": "q3", "question": "What does sentence 0 talk about?",
                      "answers": [{"text": "topic 0", "answer_start": LONG_CONTEXT.index("topic 0")}]},
                     {"id": "q4", "question": "What does sentence 6 talk about?",
                      "answers": [{"text": "topic 6", "answer_start": LONG_CONTEXT.index("topic 6")}]},
                     {"id": "q5", "question": "Which topic comes last?",
                      "answers": [{"text": "topic 11", "answer_start": LONG_CONTEXT.index("topic 11")}]}]},
        ]},
    ]


def write_squad_file(path: Path, articles: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return path


@pytest.fixture
def squad_folder(tmp_path):
    """A SQuAD folder with the official file names (train and dev hold the same articles)."""
    folder = tmp_path / "squad"
    write_squad_file(folder / "train-v1.1.json", squad_articles())
    write_squad_file(folder / "dev-v1.1.json", squad_articles())
    return folder
