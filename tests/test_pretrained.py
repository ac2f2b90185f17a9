"""save_pretrained / from_pretrained / merge: a task shared as a folder loads onto the base
(a loaded model or a checkpoint folder) with identical outputs; a merged folder loads alone."""
import json

import pytest
import torch

from diffprune.pretrained import (CONFIG_NAME, DIFF_NAME, PretrainedFolderError, from_pretrained, merge,
                                  save_pretrained)
from diffprune.projection import FixedMaskModel
from diffprune.storage import BaseModelMismatch, read_header, save_diff
from tests.conftest import tiny_bert_config


def _base():
    from transformers import BertForSequenceClassification

    from diffprune.models import mark_new_parameters

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])
    return model


def _trained():
    model = _base()
    torch.manual_seed(3)
    dense = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=2.0)
    with torch.no_grad():
        model.classifier.weight.normal_()
    return fixed.eval()


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_a_saved_folder_loads_onto_a_base_model_or_checkpoint_folder_with_identical_outputs(tmp_path, tiny_batch):
    fixed = _trained()
    expected = _logits(fixed, tiny_batch)
    folder = save_pretrained(fixed, tmp_path / "sst2-task", model_id="tiny-base", task="sst2", labels=["0", "1"])
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, DIFF_NAME])
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["base_model"] == "tiny-base" and config["task"] == "sst2"
    assert config["head_config"] == {"num_labels": 2, "problem_type": None}
    assert config["base_fingerprint"] == read_header(folder / DIFF_NAME)["fingerprint"]
    assert torch.equal(_logits(from_pretrained(_base(), folder), tiny_batch), expected)
    checkpoint = tmp_path / "base-checkpoint"
    _base().save_pretrained(checkpoint, safe_serialization=True)  # the base as a Hub-style folder
    assert torch.equal(_logits(from_pretrained(checkpoint, folder, task="sst2"), tiny_batch), expected)
    with pytest.raises(ValueError, match="is a diff for task 'sst2', not 'rte'"):
        from_pretrained(_base(), folder, task="rte")


def test_a_stored_diff_file_exports_as_a_folder(tmp_path, tiny_batch):
    fixed = _trained()
    path = save_diff(tmp_path / "diff.safetensors", fixed, model_id="tiny-base", task="sst2", labels=["0", "1"])
    folder = save_pretrained(path, tmp_path / "exported", values_dtype="bf16")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["values_dtype"] == "bfloat16" and config["head_config"]["num_labels"] == 2
    loaded = _logits(from_pretrained(_base(), folder), tiny_batch)
    assert torch.allclose(loaded, _logits(fixed, tiny_batch), atol=1e-2)  # bf16 values: close, not equal


def test_merge_writes_a_plain_model_folder(tmp_path, tiny_batch):
    from transformers import AutoModelForSequenceClassification

    fixed = _trained()
    expected = _logits(fixed, tiny_batch)
    folder = save_pretrained(fixed, tmp_path / "task", model_id="tiny-base", task="sst2", labels=["neg", "pos"])
    out = merge(_base(), folder, tmp_path / "standalone")
    standalone = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert torch.equal(_logits(standalone, tiny_batch), expected)
    assert standalone.config.id2label == {0: "neg", 1: "pos"}
    with pytest.raises(FileExistsError, match="not empty"):
        merge(_base(), folder, tmp_path / "standalone")


def test_bad_folders_and_other_bases_are_refused(tmp_path):
    with pytest.raises(PretrainedFolderError, match="neither a local folder nor a Hub repository"):
        from_pretrained(_base(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedFolderError, match=f"has no {CONFIG_NAME}"):
        from_pretrained(_base(), tmp_path / "empty")
    folder = save_pretrained(_trained(), tmp_path / "task", model_id="tiny-base", task="sst2")
    other = _base()
    with torch.no_grad():
        other.bert.embeddings.word_embeddings.weight[0, 0] += 1.0
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BaseModelMismatch, match="made for base model tiny-base"):
        from_pretrained(other, folder)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
