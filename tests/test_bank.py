"""TaskBank: N task diffs over one base, each activation bit-exact against a fresh base with
that one diff applied, the base bit-identical after deactivate, bad diffs refused at add."""
import pytest
import torch

from diffprune.bank import TaskBank
from diffprune.projection import FixedMaskModel
from diffprune.storage import BaseModelMismatch, apply_diff_, load_diff, save_diff
from tests.conftest import tiny_bert_config


def _base(num_labels=2):
    from transformers import BertForSequenceClassification

    from diffprune.models import mark_new_parameters

    torch.manual_seed(0)  # the head is built last: every head size shares the same body
    model = BertForSequenceClassification(tiny_bert_config(num_labels=num_labels)).eval()
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])
    return model


def _task_diff(path, num_labels, seed, rate=5.0):
    model = _base(num_labels)
    torch.manual_seed(seed)
    dense = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=rate)
    with torch.no_grad():
        model.classifier.weight.normal_()
        model.classifier.bias.normal_()
    return save_diff(path, fixed, model_id="tiny", task=f"task{seed}")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(state, model):
    current = model.state_dict()
    assert current.keys() == state.keys()
    for key, value in state.items():
        assert current[key].shape == value.shape and torch.equal(current[key], value), key


def test_switching_tasks_is_bit_exact_and_the_base_comes_back(tmp_path, tiny_batch):
    paths = {"two_labels": (_task_diff(tmp_path / "a.safetensors", 2, seed=1), 2),
             "one_score": (_task_diff(tmp_path / "b.safetensors", 1, seed=2), 1),
             "overlapping": (_task_diff(tmp_path / "c.safetensors", 2, seed=3, rate=20.0), 2)}
    expected = {}
    for name, (path, labels) in paths.items():
        fresh = _base(labels)
        apply_diff_(fresh, load_diff(path))
        expected[name] = _state(fresh)
    bank = TaskBank(_base(2))
    pristine = _state(bank.model)
    for name, (path, _) in paths.items():
        bank.add(name, path)
    _assert_same(pristine, bank.model)  # adding stages, it writes nothing
    inputs = {k: v for k, v in tiny_batch.items() if k != "labels"}
    for name in ["two_labels", "one_score", "overlapping", "one_score", "two_labels"]:
        model = bank.activate(name)
        _assert_same(expected[name], model)
        with torch.no_grad():
            assert model(**inputs).logits.shape == (4, paths[name][1])
        assert model.config.num_labels == paths[name][1]
    bank.deactivate()
    _assert_same(pristine, bank.model)
    assert bank.model.config.num_labels == 2
    sizes = bank.resident_bytes()
    in_memory = list(bank.model.parameters()) + list(bank.model.buffers())  # non-persistent buffers too
    assert sizes["base"] == sum(v.numel() * v.element_size() for v in in_memory)
    # per kept entry: an int64 index, the new and the original fp32 value; plus the task's head
    expected_task_bytes = sum(16 * load_diff(path).nonzeros + sum(h.numel() * 4 for h in load_diff(path).head.values())
                              for path, _ in paths.values())
    assert sizes["tasks"] == expected_task_bytes


def test_a_task_added_while_another_is_active_is_staged_against_the_base(tmp_path):
    bank = TaskBank(_base())
    bank.add("a", _task_diff(tmp_path / "a.safetensors", 2, seed=1, rate=30.0))
    bank.activate("a")
    bank.add("b", _task_diff(tmp_path / "b.safetensors", 2, seed=2, rate=30.0))  # overlaps a's entries
    assert bank.active == "a"
    bank.activate("b")
    fresh = _base()
    apply_diff_(fresh, load_diff(tmp_path / "b.safetensors"))
    _assert_same(_state(fresh), bank.model)


def test_a_diff_for_another_base_or_task_is_refused_and_changes_nothing(tmp_path):
    path = _task_diff(tmp_path / "a.safetensors", 2, seed=1)
    other = _base()
    with torch.no_grad():
        other.bert.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    bank = TaskBank(other)
    before = _state(other)
    with pytest.raises(BaseModelMismatch, match="they first differ at character"):
        bank.add("a", path)
    with pytest.raises(ValueError, match="is a diff for task 'task1', not 'rte'"):
        TaskBank(_base()).add("a", path, task="rte")
    with pytest.raises(KeyError, match="not in the bank"):
        bank.activate("a")
    _assert_same(before, other)
