"""Sparse diff files: round trip, bit-exact apply/revert, mismatched base refused."""
import pytest
import torch

from diffprune.projection import FixedMaskModel
from diffprune.storage import (BaseModelMismatch, apply_diff_, fingerprint, load_dense_diff, load_diff,
                               save_dense_diff, save_diff)
from tests.conftest import tiny_bert_config


def _fresh_base():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def _trained_fixed(model):
    torch.manual_seed(3)
    dense = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=1.0)
    with torch.no_grad():
        model.classifier.weight.normal_()  # a trained head travels with the diff
    return fixed.eval()


def test_save_load_onto_fresh_base_gives_identical_logits(tmp_path, tiny_batch):
    fixed = _trained_fixed(_fresh_base())
    with torch.no_grad():
        expected = fixed(**tiny_batch).logits
    path = save_diff(tmp_path / "diff.safetensors", fixed, model_id="tiny", rate=1.0)
    diff = load_diff(path)
    assert diff.header["model_id"] == "tiny" and diff.header["nonzeros"] == fixed.nonzeros
    assert diff.header["diffed_params"] == fixed.diffed_params
    fresh = _fresh_base()
    apply_diff_(fresh, diff)
    with torch.no_grad():
        assert torch.equal(fresh(**tiny_batch).logits, expected)


def test_apply_then_revert_is_bit_exact_even_in_half_precision(tmp_path):
    fixed = _trained_fixed(_fresh_base())
    path = save_diff(tmp_path / "d.safetensors", fixed, values_dtype=torch.float16)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        base = _fresh_base().to(dtype)
        diff = load_diff(path)
        diff.header["fingerprint"] = fingerprint(base)  # same weights, other dtype
        before = {k: v.clone() for k, v in base.state_dict().items()}
        handle = apply_diff_(base, diff)
        assert any(not torch.equal(v, before[k]) for k, v in base.state_dict().items())
        handle.revert()
        for k, v in base.state_dict().items():
            assert torch.equal(v, before[k]), (dtype, k)


def test_mismatched_base_is_refused(tmp_path):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny")
    other = _fresh_base()
    with torch.no_grad():
        other.bert.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BaseModelMismatch, match="made for base model tiny"):
        apply_diff_(other, load_diff(path))
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # nothing written


def test_fingerprint_sees_names_shapes_and_values():
    a, b = _fresh_base(), _fresh_base()
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.bert.embeddings.word_embeddings.weight[3, 2] *= -1
    assert fingerprint(a) != fingerprint(b)
    with torch.no_grad():
        a.classifier.weight.zero_()  # the head is not part of the base
    assert fingerprint(a) == fingerprint(_fresh_base())


def test_dense_diff_round_trip(tmp_path):
    diff = {"x.weight": torch.randn(3, 4)}
    head = {"classifier.bias": torch.randn(2)}
    path = save_dense_diff(tmp_path / "dense.safetensors", diff, head, {"method": "m"})
    d2, h2, meta = load_dense_diff(path)
    assert torch.equal(d2["x.weight"], diff["x.weight"]) and torch.equal(h2["classifier.bias"], head["classifier.bias"])
    assert meta == {"method": "m"}
