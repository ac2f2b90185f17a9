"""SQuAD v1.1: reading (local JSON or the Hub), sliding-window features, span post-processing.

Feature building and post-processing follow the Hugging Face ``run_qa.py`` recipe: a
context longer than the window is split into overlapping windows (``doc_stride`` tokens of
overlap); a training window that does not contain the whole answer points at the CLS
token; at evaluation the best-scoring valid span over all windows of a question is mapped
back to the context through the tokenizer's character offsets.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .base import EvalSet, FeatureDataset, PaddingCollator, Task, TaskData, join_notes, predict_outputs
from .data import load_hub_dataset, local_dir, require_file, subsample_indices, subsample_note
from .metrics import squad_scores

HUB_SQUAD = "rajpurkar/squad"
DEFAULT_TRAIN_FILE, DEFAULT_DEV_FILE = "train-v1.1.json", "dev-v1.1.json"
# The offline stand-in (the official dev set split by article) uses these names; results on
# it are not comparable to the paper's and must say so.
ARTICLE_SPLIT_TRAIN_FILE, ARTICLE_SPLIT_DEV_FILE = "train.json", "dev.json"
ARTICLE_SPLIT_NOTE = "SQuAD v1.1 dev, article split"


def read_squad_json(path: Path) -> list[dict]:
    """Flattens a SQuAD v1.1 file into one dict per question, in the Hub's field layout."""
    fix = "restore it from the SQuAD v1.1 download, or point data.squad_dir / $SQUAD_DIR at a complete copy"
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the file is truncated or damaged; {fix}") from None
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise ValueError(f"{path} is not a SQuAD file: it has no `data` list of articles; {fix}")
    examples = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    examples.append({
                        "id": qa["id"], "title": article.get("title", ""), "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {"text": [a["text"] for a in qa["answers"]],
                                    "answer_start": [a["answer_start"] for a in qa["answers"]]},
                    })
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: question {len(examples) + 1} is malformed (missing or wrong field: {error}); "
                         f"{fix}") from None
    if not examples:
        raise ValueError(f"{path} holds no questions: the file is empty or truncated; {fix}")
    return examples


def _check_window_room(tokenizer, questions: Sequence[str], max_seq_length: int, doc_stride: int) -> None:
    """Every window holds the whole question, the special tokens and at least one context
    token more than the ``doc_stride`` overlap. Checked up front because on a violation the
    Rust tokenizer panics (a PanicException, which ``except Exception`` does not catch)."""
    if not questions:
        return
    longest_question = max(len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"])
    context_room = max_seq_length - longest_question - tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= context_room:
        fix = (f"lower doc_stride to at most {context_room - 1} or raise max_seq_length" if context_room > 1
               else "raise max_seq_length")
        raise ValueError(
            f"SQuAD windows of max_seq_length={max_seq_length} tokens leave only {context_room} context "
            f"tokens next to the longest question ({longest_question} tokens), but the window overlap "
            f"doc_stride={doc_stride} must be smaller than that: {fix}")


def _window_encodings(tokenizer, examples: Sequence[Mapping], max_seq_length: int, doc_stride: int):
    """Tokenises question/context pairs into overlapping windows over the context."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (offset mapping and overflowing "
                         f"windows); got {type(tokenizer).__name__}")
    question_first = getattr(tokenizer, "padding_side", "right") == "right"
    # Leading whitespace in some questions would only waste window room.
    questions = [example["question"].lstrip() for example in examples]
    contexts = [example["context"] for example in examples]
    _check_window_room(tokenizer, questions, max_seq_length, doc_stride)
    encoded = tokenizer(questions if question_first else contexts,
                        contexts if question_first else questions,
                        truncation="only_second" if question_first else "only_first",
                        max_length=max_seq_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
    context_sequence_id = 1 if question_first else 0
    return encoded, context_sequence_id


def _model_inputs(encoded, index: int) -> dict[str, list]:
    return {key: encoded[key][index] for key in encoded.keys()
            if key not in ("offset_mapping", "overflow_to_sample_mapping")}


def build_train_features(tokenizer, examples: Sequence[Mapping], max_seq_length: int,
                         doc_stride: int, chunk_size: int = 1000) -> FeatureDataset:
    """Windows with ``start_positions`` / ``end_positions`` (token indices, CLS when the
    window does not contain the whole first gold answer)."""
    columns: dict[str, list] = {}
    for chunk_start in range(0, len(examples), chunk_size):
        chunk = examples[chunk_start:chunk_start + chunk_size]
        encoded, context_id = _window_encodings(tokenizer, chunk, max_seq_length, doc_stride)
        for i, offsets in enumerate(encoded["offset_mapping"]):
            example = chunk[encoded["overflow_to_sample_mapping"][i]]
            input_ids = encoded["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = encoded.sequence_ids(i)
            start_position = end_position = cls_index
            if example["answers"]["answer_start"]:
                start_char = example["answers"]["answer_start"][0]
                end_char = start_char + len(example["answers"]["text"][0])
                context_tokens = [t for t, s in enumerate(sequence_ids) if s == context_id]
                first, last = context_tokens[0], context_tokens[-1]
                if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                    # First token that starts after the answer start, minus one; likewise the end.
                    token = first
                    while token <= last and offsets[token][0] <= start_char:
                        token += 1
                    start_position = token - 1
                    token = last
                    while token >= first and offsets[token][1] >= end_char:
                        token -= 1
                    end_position = token + 1
            feature = _model_inputs(encoded, i)
            feature["start_positions"], feature["end_positions"] = start_position, end_position
            for key, value in feature.items():
                columns.setdefault(key, []).append(value)
    return FeatureDataset(columns)


def build_eval_features(tokenizer, examples: Sequence[Mapping], max_seq_length: int, doc_stride: int,
                        chunk_size: int = 1000) -> tuple[FeatureDataset, list[int], list[list]]:
    """Windows for inference plus, per window, its example index and the character offsets of
    its context tokens (None for question and special tokens, which are never answers)."""
    columns: dict[str, list] = {}
    example_index, window_offsets = [], []
    for chunk_start in range(0, len(examples), chunk_size):
        chunk = examples[chunk_start:chunk_start + chunk_size]
        encoded, context_id = _window_encodings(tokenizer, chunk, max_seq_length, doc_stride)
        for i, offsets in enumerate(encoded["offset_mapping"]):
            example_index.append(chunk_start + encoded["overflow_to_sample_mapping"][i])
            sequence_ids = encoded.sequence_ids(i)
            window_offsets.append([tuple(offset) if sequence_ids[t] == context_id else None
                                   for t, offset in enumerate(offsets)])
            for key, value in _model_inputs(encoded, i).items():
                columns.setdefault(key, []).append(value)
    return FeatureDataset(columns), example_index, window_offsets


def postprocess_predictions(examples: Sequence[Mapping], feature_example_index: Sequence[int],
                            feature_offsets: Sequence[Sequence], start_logits: Sequence[np.ndarray],
                            end_logits: Sequence[np.ndarray], n_best: int = 20,
                            max_answer_length: int = 30) -> dict[str, str]:
    """Best span text per question id: over all its windows, the ``n_best`` top start and end
    tokens are paired, spans that leave the context, run backwards or exceed
    ``max_answer_length`` tokens are dropped, and the highest start+end logit wins."""
    best: dict[int, tuple[float, str]] = {}
    for feature, example_idx in enumerate(feature_example_index):
        offsets = feature_offsets[feature]
        # Logits come padded to the longest window of their batch; the tail is padding.
        starts = np.asarray(start_logits[feature])[: len(offsets)]
        ends = np.asarray(end_logits[feature])[: len(offsets)]
        context = examples[example_idx]["context"]
        top_ends = np.argsort(ends)[::-1][:n_best]
        for start in np.argsort(starts)[::-1][:n_best]:
            if offsets[start] is None:
                continue
            for end in top_ends:
                if offsets[end] is None or end < start or end - start + 1 > max_answer_length:
                    continue
                score = float(starts[start] + ends[end])
                if example_idx not in best or score > best[example_idx][0]:
                    best[example_idx] = (score, context[offsets[start][0]:offsets[end][1]])
    return {example["id"]: best[i][1] if i in best else "" for i, example in enumerate(examples)}


class SquadTask(Task):
    name = "squad"
    kind = "qa"
    num_labels = None
    primary_metric = "f1"
    columns = ["squad_em", "squad_f1"]
    n_best = 20
    max_answer_length = 30

    # --- reading ----------------------------------------------------------------------

    def _how_to_go_local(self) -> str:
        return (f"set data.squad_dir in the config or the SQUAD_DIR environment variable to a folder "
                f"holding {DEFAULT_TRAIN_FILE} and {DEFAULT_DEV_FILE} (or the article split's "
                f"{ARTICLE_SPLIT_TRAIN_FILE} and {ARTICLE_SPLIT_DEV_FILE})")

    def local_files(self, squad_dir: Path, data_cfg: Mapping[str, Any]) -> tuple[Path, Path, str]:
        """(train file, dev file, note) in ``squad_dir``: the configured names, else the
        official names, else the offline article split's ``train.json`` / ``dev.json``."""
        note = data_cfg.get("squad_note") or ""
        train_name, dev_name = data_cfg.get("squad_train_file"), data_cfg.get("squad_dev_file")
        if not train_name and not dev_name:
            official_present = (squad_dir / DEFAULT_TRAIN_FILE).is_file() or (squad_dir / DEFAULT_DEV_FILE).is_file()
            split_present = ((squad_dir / ARTICLE_SPLIT_TRAIN_FILE).is_file()
                             and (squad_dir / ARTICLE_SPLIT_DEV_FILE).is_file())
            if not official_present and split_present:
                return (squad_dir / ARTICLE_SPLIT_TRAIN_FILE, squad_dir / ARTICLE_SPLIT_DEV_FILE,
                        note or ARTICLE_SPLIT_NOTE)
        what = "SQuAD (local folder from data.squad_dir or $SQUAD_DIR)"
        train_file = require_file(squad_dir / (train_name or DEFAULT_TRAIN_FILE), what)
        dev_file = require_file(squad_dir / (dev_name or DEFAULT_DEV_FILE), what)
        return train_file, dev_file, note

    def local_data_files(self, data_cfg: Mapping[str, Any] | None) -> list[Path] | None:
        data_cfg = data_cfg or {}
        squad_dir = local_dir(data_cfg, "squad_dir", "SQUAD_DIR")
        if squad_dir is None:
            return None
        try:
            train_file, dev_file, _ = self.local_files(squad_dir, data_cfg)
        except FileNotFoundError:
            return None
        return [train_file, dev_file]

    def read_raw(self, data_cfg: Mapping[str, Any] | None) -> tuple[dict[str, list[dict]], str, str]:
        """({"train": examples, "dev": examples}, source, note)."""
        data_cfg = data_cfg or {}
        squad_dir = local_dir(data_cfg, "squad_dir", "SQUAD_DIR")
        if squad_dir is not None:
            train_file, dev_file, note = self.local_files(squad_dir, data_cfg)
            return {"train": read_squad_json(train_file), "dev": read_squad_json(dev_file)}, "local", note
        dataset = load_hub_dataset(HUB_SQUAD, None, self._how_to_go_local())
        raw = {split: [dict(row) for row in dataset[hub_split]]
               for split, hub_split in (("train", "train"), ("dev", "validation"))}
        return raw, "hub", data_cfg.get("squad_note") or ""

    def load(self, tokenizer, data_cfg: Mapping[str, Any] | None, max_seq_length: int,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             seed: int = 0, doc_stride: int = 128) -> TaskData:
        raw, source, source_note = self.read_raw(data_cfg)
        notes = [source_note]
        chosen = {}
        for split, limit in (("train", max_train_examples), ("dev", max_eval_examples)):
            indices = subsample_indices(len(raw[split]), limit, seed)
            chosen[split] = raw[split] if indices is None else [raw[split][i] for i in indices]
            if indices is not None:
                notes.append(subsample_note(split, len(chosen[split]), len(raw[split]), seed))

        train = build_train_features(tokenizer, chosen["train"], max_seq_length, doc_stride)
        dev_features, example_index, offsets = build_eval_features(
            tokenizer, chosen["dev"], max_seq_length, doc_stride)
        dev = EvalSet(name="dev", dataset=dev_features, num_examples=len(chosen["dev"]),
                      num_examples_total=len(raw["dev"]), column="squad_f1", examples=chosen["dev"],
                      feature_example_index=example_index, feature_offsets=offsets)
        return TaskData(
            train=train, evals={"dev": dev},
            collate=PaddingCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right")),
            train_examples=len(chosen["train"]), train_examples_total=len(raw["train"]),
            dev_examples=dev.num_examples, dev_examples_total=dev.num_examples_total,
            note=join_notes(notes), source=source,
            details={"train_features": len(train), "dev_features": len(dev_features)})

    # --- scoring ----------------------------------------------------------------------

    def _report(self, eval_set: EvalSet, predictions: Mapping[str, str]) -> dict:
        references = {example["id"]: example["answers"]["text"] for example in eval_set.examples}
        values = squad_scores(predictions, references)
        return {"metrics": values, "scores": {"squad_em": values["exact_match"], "squad_f1": values["f1"]}}

    def predict(self, model: nn.Module, eval_set: EvalSet, collate, batch_size: int = 64,
                device: str | torch.device = "cpu") -> dict[str, str]:
        """Answer text per question id."""
        outputs = predict_outputs(model, eval_set.dataset, collate, batch_size, device,
                                  ["start_logits", "end_logits"])
        return postprocess_predictions(eval_set.examples, eval_set.feature_example_index,
                                       eval_set.feature_offsets, outputs["start_logits"], outputs["end_logits"],
                                       n_best=self.n_best, max_answer_length=self.max_answer_length)

    def evaluate(self, model: nn.Module, data: TaskData, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> dict:
        eval_set = data.evals["dev"]
        return self._report(eval_set, self.predict(model, eval_set, data.collate, batch_size, device))

    def majority_baseline(self, data: TaskData) -> dict:
        """The floor a trained model must beat. SQuAD has no majority class (its constant
        predictor, the empty answer, scores 0), so the floor is a simple span baseline that
        needs no training: the context sentence sharing the most words with the question."""
        eval_set = data.evals["dev"]
        return self._report(eval_set, {example["id"]: overlap_sentence(example["question"], example["context"])
                                       for example in eval_set.examples})


_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def overlap_sentence(question: str, context: str) -> str:
    """The sentence of ``context`` that shares the most distinct (lower-cased) words with
    ``question``; the first such sentence on a tie. The answer usually sits in the sentence
    that repeats the question's words, so this span baseline scores well above zero."""
    asked = set(_WORD.findall(question.lower()))
    sentences = [s for s in _SENTENCE_END.split(context.strip()) if s]
    if not sentences:
        return ""
    return max(sentences, key=lambda s: len(asked & set(_WORD.findall(s.lower()))))
