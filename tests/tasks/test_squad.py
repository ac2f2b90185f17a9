"""SQuAD v1.1: file resolution, sliding-window features, post-processing round trip, scoring."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from diffprune.tasks import DataUnavailableError, get_task
from diffprune.tasks import data as data_module
from diffprune.tasks.squad import (ARTICLE_SPLIT_NOTE, build_eval_features, build_train_features, overlap_sentence,
                                   postprocess_predictions, read_squad_json)

from .conftest import squad_articles, write_squad_file

# Windows of 96 tokens with the character-level tiny tokenizer: the long context needs many.
MAX_LEN, STRIDE = 96, 32


@pytest.fixture
def examples(tmp_path):
    return read_squad_json(write_squad_file(tmp_path / "dev-v1.1.json", squad_articles()))


def test_read_squad_json_flattens_questions(examples):
    assert [e["id"] for e in examples] == ["q1", "q2", "q3", "q4", "q5"]
    assert examples[0]["answers"]["text"] == ["France", "France."]
    assert examples[0]["context"][examples[0]["answers"]["answer_start"][0]:].startswith("France")
    assert examples[2]["title"] == "Long"


def test_train_positions_point_at_the_answer_or_cls(examples, tiny_tokenizer):
    train = build_train_features(tiny_tokenizer, examples, MAX_LEN, STRIDE)
    dev, example_index, offsets = build_eval_features(tiny_tokenizer, examples, MAX_LEN, STRIDE)
    assert train.column("input_ids") == dev.column("input_ids"), "train and eval use the same windows"
    windows_per_example = np.bincount(example_index)
    assert windows_per_example[2] > 3   # the long context is split into many windows
    answered = set()
    for feature, example in enumerate(example_index):
        start, end = train[feature]["start_positions"], train[feature]["end_positions"]
        assert all(len(train[feature][key]) <= MAX_LEN for key in ("input_ids", "attention_mask"))
        if start == 0:   # CLS: this window does not hold the whole answer
            assert end == 0
            continue
        context = examples[example]["context"]
        assert context[offsets[feature][start][0]:offsets[feature][end][1]] == examples[example]["answers"]["text"][0]
        answered.add(example)
    assert answered == set(range(len(examples)))
    # The last answer of the long context lies only in its later windows.
    last_windows = [f for f, e in enumerate(example_index) if e == 4]
    assert train[last_windows[0]]["start_positions"] == 0 and train[last_windows[-1]]["start_positions"] > 0


def gold_logits(train, low=-10.0, high=10.0):
    """Start/end logits peaked at each window's gold positions (CLS where it has no answer)."""
    starts, ends = [], []
    for feature in range(len(train)):
        length = len(train[feature]["input_ids"])
        start, end = np.full(length, low), np.full(length, low)
        start[train[feature]["start_positions"]] = high
        end[train[feature]["end_positions"]] = high
        starts.append(start), ends.append(end)
    return starts, ends


def test_postprocessing_recovers_the_gold_answer_from_gold_logits(examples, tiny_tokenizer):
    train = build_train_features(tiny_tokenizer, examples, MAX_LEN, STRIDE)
    _, example_index, offsets = build_eval_features(tiny_tokenizer, examples, MAX_LEN, STRIDE)
    starts, ends = gold_logits(train)
    # Padded logits (as a batch padded to a longer window gives them) must not matter.
    starts = [np.concatenate([s, np.full(7, 50.0)]) for s in starts]
    predictions = postprocess_predictions(examples, example_index, offsets, starts, ends)
    assert predictions == {e["id"]: e["answers"]["text"][0] for e in examples}


def test_postprocessing_drops_overlong_and_backward_spans(examples, tiny_tokenizer):
    examples = examples[:1]
    _, example_index, offsets = build_eval_features(tiny_tokenizer, examples, 128, STRIDE)
    context_tokens = [t for t, offset in enumerate(offsets[0]) if offset is not None]
    first, last = context_tokens[0], context_tokens[-1]
    starts, ends = np.zeros(len(offsets[0])), np.zeros(len(offsets[0]))
    starts[first + 1], ends[last] = 10.0, 9.0      # the best pair, but longer than 30 tokens
    starts[first + 5], ends[first] = 8.0, 8.0      # the runner-up runs backwards (end before start)
    ends[first + 3] = 5.0                          # so the best valid span is first+1 .. first+3
    prediction = postprocess_predictions(examples, example_index, offsets, [starts], [ends])["q1"]
    context = examples[0]["context"]
    assert prediction == context[offsets[0][first + 1][0]:offsets[0][first + 3][1]] == "he N"
    relaxed = postprocess_predictions(examples, example_index, offsets, [starts], [ends],
                                      max_answer_length=len(context_tokens))["q1"]
    assert relaxed == context[1:]

class OracleQAModel(nn.Module):
    """Returns gold-peaked logits for windows it was shown (keyed by their input ids)."""

    def __init__(self, train):
        super().__init__()
        self.gold = {tuple(train[i]["input_ids"]): (train[i]["start_positions"], train[i]["end_positions"])
                     for i in range(len(train))}

    def forward(self, input_ids, attention_mask, **_):
        start_logits = torch.full(input_ids.shape, -10.0)
        end_logits = torch.full(input_ids.shape, -10.0)
        for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            start, end = self.gold[tuple(ids[:sum(mask)])]
            start_logits[row, start], end_logits[row, end] = 10.0, 10.0
        return {"start_logits": start_logits, "end_logits": end_logits}


def test_load_evaluate_and_baseline_end_to_end(squad_folder, tiny_tokenizer):
    task = get_task("squad")
    data = task.load(tiny_tokenizer, {"squad_dir": str(squad_folder)}, MAX_LEN, doc_stride=STRIDE)
    assert (data.train_examples, data.train_examples_total, data.dev_examples) == (5, 5, 5)
    assert data.note == "" and data.source == "local"
    assert len(data.train) > 5 and data.details["train_features"] == len(data.train)
    batch = data.collate([data.train[i] for i in range(4)])
    assert {"start_positions", "end_positions", "input_ids"} <= set(batch)
    # Train and dev hold the same questions here, so the oracle knows every dev window.
    result = task.evaluate(OracleQAModel(data.train), data, batch_size=3)
    assert result == {"metrics": {"exact_match": 100.0, "f1": 100.0}, "scores": {"squad_em": 100.0, "squad_f1": 100.0}}
    floor = task.majority_baseline(data)
    assert set(floor["scores"]) == {"squad_em", "squad_f1"} and 0.0 <= floor["scores"]["squad_f1"] <= 100.0


def test_the_span_baseline_answers_with_the_sentence_sharing_most_question_words():
    context = "Paris is large. The Eiffel Tower was built in 1889 for a fair. It is tall."
    assert overlap_sentence("When was the Eiffel Tower built?", context) == \
        "The Eiffel Tower was built in 1889 for a fair."
    assert overlap_sentence("Who?", "No overlap here. None at all.") == "No overlap here."  # tie: the first
    assert overlap_sentence("Anything?", "") == ""
    # Scored as SQuAD scores it: the gold answer is 1 of the sentence's 8 normalised words (articles go).
    task = get_task("squad")
    eval_set = type("EvalSetStub", (), {})()
    eval_set.examples = [{"id": "q", "question": "When was the Eiffel Tower built?", "context": context,
                          "answers": {"text": ["1889"], "answer_start": [43]}}]
    report = task.majority_baseline(type("DataStub", (), {"evals": {"dev": eval_set}})())
    assert report["scores"]["squad_em"] == 0.0
    assert report["scores"]["squad_f1"] == pytest.approx(100 * 2 * (1 / 8) * 1 / (1 / 8 + 1))


def test_subsampling_counts_questions(squad_folder, tiny_tokenizer):
    data = get_task("squad").load(tiny_tokenizer, {"squad_dir": str(squad_folder), "squad_note": "handmade"},
                                  MAX_LEN, max_train_examples=2, max_eval_examples=3, seed=1, doc_stride=STRIDE)
    assert (data.train_examples, data.train_examples_total, data.dev_examples, data.dev_examples_total) == (2, 5, 3, 5)
    assert data.note == ("handmade; train subsampled to 2 of 5 examples (seed 1); "
                         "dev subsampled to 3 of 5 examples (seed 1)")
    assert len(data.evals["dev"].examples) == 3


def test_article_split_files_are_used_and_labelled(tmp_path, tiny_tokenizer):
    write_squad_file(tmp_path / "train.json", squad_articles()[:1])
    write_squad_file(tmp_path / "dev.json", squad_articles()[1:])
    data = get_task("squad").load(tiny_tokenizer, {"squad_dir": str(tmp_path)}, MAX_LEN, doc_stride=STRIDE)
    assert data.note == ARTICLE_SPLIT_NOTE == "SQuAD v1.1 dev, article split"
    assert (data.train_examples, data.dev_examples) == (2, 3)


def test_configured_file_names(tmp_path, tiny_tokenizer):
    write_squad_file(tmp_path / "a.json", squad_articles()[:1])
    write_squad_file(tmp_path / "b.json", squad_articles())
    cfg = {"squad_dir": str(tmp_path), "squad_train_file": "a.json", "squad_dev_file": "b.json"}
    data = get_task("squad").load(tiny_tokenizer, cfg, MAX_LEN, doc_stride=STRIDE)
    assert (data.train_examples, data.dev_examples, data.note) == (2, 5, "")


def test_missing_squad_file_names_the_path(tmp_path, tiny_tokenizer):
    write_squad_file(tmp_path / "train-v1.1.json", squad_articles())
    with pytest.raises(FileNotFoundError, match=r"dev-v1\.1\.json"):
        get_task("squad").load(tiny_tokenizer, {"squad_dir": str(tmp_path)}, MAX_LEN, doc_stride=STRIDE)


def test_offline_without_local_dir_says_what_to_set(monkeypatch, tiny_tokenizer):
    monkeypatch.delenv("SQUAD_DIR", raising=False)

    def offline(path, config=None):
        raise ConnectionError("cannot reach huggingface.co")

    monkeypatch.setattr(data_module, "_hub_load_dataset", offline)
    with pytest.raises(DataUnavailableError) as error:
        get_task("squad").load(tiny_tokenizer, {}, MAX_LEN, doc_stride=STRIDE)
    assert "rajpurkar/squad" in str(error.value)
    assert "SQUAD_DIR" in str(error.value) and "data.squad_dir" in str(error.value)


def test_hub_source(monkeypatch, examples, tiny_tokenizer):
    import datasets

    monkeypatch.delenv("SQUAD_DIR", raising=False)
    table = datasets.Dataset.from_list(examples)
    monkeypatch.setattr(data_module, "_hub_load_dataset",
                        lambda path, config=None: datasets.DatasetDict({"train": table, "validation": table}))
    data = get_task("squad").load(tiny_tokenizer, {}, MAX_LEN, doc_stride=STRIDE)
    assert data.source == "hub" and data.dev_examples == 5
    assert data.evals["dev"].examples[0]["answers"]["text"] == ["France", "France."]


def test_window_too_small_for_the_stride_is_a_clear_error(examples, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"lower doc_stride to at most \d+ or raise max_seq_length"):
        build_train_features(tiny_tokenizer, examples, 64, 48)


def test_slow_tokenizer_is_refused(examples, tmp_path, tiny_tokenizer):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tiny_tokenizer.convert_ids_to_tokens(list(range(tiny_tokenizer.vocab_size)))))
    with pytest.raises(ValueError, match="fast tokenizer"):
        build_eval_features(BertTokenizer(str(vocab)), examples, MAX_LEN, STRIDE)


# --- the real offline copy (SQUAD_DIR) ----------------------------------------------------

def test_real_article_split(squad_dir, tiny_tokenizer):
    task = get_task("squad")
    raw, source, note = task.read_raw({"squad_dir": squad_dir})
    assert (len(raw["train"]), len(raw["dev"]), source, note) == (8582, 1988, "local", ARTICLE_SPLIT_NOTE)
    data = task.load(tiny_tokenizer, {"squad_dir": squad_dir}, 384, max_train_examples=20,
                     max_eval_examples=20, doc_stride=128)
    assert data.note.startswith("SQuAD v1.1 dev, article split; train subsampled to 20 of 8582")


@pytest.mark.parametrize("content, message", [
    ('{"version": "1.1", "data": [{"title": "t", "paragr', "is not valid JSON .* the file is truncated or damaged"),
    ("{}", "is not a SQuAD file: it has no `data` list of articles"),
    ('{"data": []}', "holds no questions: the file is empty or truncated"),
    ('{"data": [{"title": "t", "paragraphs": [{"qas": [{"id": "q1", "question": "why"}]}]}]}',
     "question 1 is malformed .missing or wrong field: 'context'"),
])
def test_a_broken_squad_file_is_named(tmp_path, content, message):
    """A truncated or `{}` SQuAD JSON failed with a JSONDecodeError / KeyError naming no file."""
    path = tmp_path / "dev-v1.1.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}:? {message}"):
        read_squad_json(path)


def test_the_no_data_hint_names_only_keys_the_config_accepts(monkeypatch, tiny_tokenizer):
    from diffprune import config_schema

    hint = get_task("squad")._how_to_go_local()
    data_keys = set(config_schema.schema()["properties"]["data"]["properties"])
    named = set(re.findall(r"data\.(\w+)", hint))
    assert named and named <= data_keys, f"the hint names {named - data_keys}, which a config may not set"
