"""Sparse diff files: round trip, bit-exact apply/revert, mismatched base refused, bad files refused
before anything is written."""
import json
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffprune import models
from diffprune.projection import FixedMaskModel
from diffprune.storage import (CHECKSUM_KEY, FORMAT, BaseModelMismatch, DiffFileError, TaskMismatch,
                               UnverifiedDiffWarning, apply_diff_, check_task, fingerprint, load_dense_diff,
                               load_diff, payload_sha256, read_header, save_dense_diff, save_diff, write_diff)
from tests.conftest import tiny_bert_config
from tests.tiny_convnet import HEAD_PATTERN, pretrained_convnet, task_batch


def _fresh_base():
    from transformers import BertForSequenceClassification

    from diffprune.models import mark_new_parameters

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])  # built by hand: declare the head
    return model


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


def test_fingerprint_and_fixed_mask_model_take_the_marked_head_or_refuse():
    model = pretrained_convnet()  # built by hand: its fc head is neither marked nor named
    with pytest.raises(ValueError, match="no task head known.*head_pattern.*mark_new_parameters"):
        fingerprint(model)
    with pytest.raises(ValueError, match="no task head known"):
        FixedMaskModel.from_dense(model, {"conv1.weight": torch.ones_like(model.conv1.weight)}, rate=1.0)
    marked = pretrained_convnet()
    models.mark_new_parameters(marked, ["fc.weight", "fc.bias"])
    assert fingerprint(marked) == fingerprint(pretrained_convnet(), HEAD_PATTERN)
    with torch.no_grad():
        marked.fc.weight.zero_()  # the head is not part of the base
    assert fingerprint(marked) == fingerprint(pretrained_convnet(), HEAD_PATTERN)
    dense = {"conv1.weight": torch.ones_like(marked.conv1.weight)}
    assert FixedMaskModel.from_dense(marked, dense, rate=1.0).head_names == ["fc.weight", "fc.bias"]


def test_dense_diff_round_trip(tmp_path):
    diff = {"x.weight": torch.randn(3, 4)}
    head = {"classifier.bias": torch.randn(2)}
    path = save_dense_diff(tmp_path / "dense.safetensors", diff, head, {"method": "m"})
    d2, h2, meta = load_dense_diff(path)
    assert torch.equal(d2["x.weight"], diff["x.weight"]) and torch.equal(h2["classifier.bias"], head["classifier.bias"])
    assert meta == {"method": "m"}


def _convnet_fixed_with_task_statistics():
    """A fixed-mask ConvNet whose BatchNorm statistics are the task's (as after training)."""
    model = pretrained_convnet()
    torch.manual_seed(3)
    dense = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if not n.startswith("fc.")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=20.0, head_pattern=HEAD_PATTERN)
    with torch.no_grad():
        fixed.train()(task_batch(seed=1)[0])
    return fixed.eval()


def test_task_buffers_are_stored_applied_and_reverted_bit_exactly(tmp_path):
    fixed = _convnet_fixed_with_task_statistics()
    images, _ = task_batch(seed=2)
    with torch.no_grad():
        expected = fixed(images)
    path = save_diff(tmp_path / "diff.safetensors", fixed)
    diff = load_diff(path)
    assert diff.header["buffers"] == sorted(diff.buffers) == sorted(fixed.task_buffers())
    assert torch.equal(diff.buffers["bn1.running_mean"], fixed.model.bn1.running_mean)
    assert int(diff.buffers["bn1.num_batches_tracked"]) == int(fixed.model.bn1.num_batches_tracked)
    fresh = pretrained_convnet()
    pristine = {k: v.clone() for k, v in fresh.state_dict().items()}
    handle = apply_diff_(fresh, diff)
    with torch.no_grad():
        assert torch.equal(fresh(images), expected)
    handle.revert()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, pristine[name]), name


def test_a_task_buffer_the_model_lacks_is_refused_before_any_write(tmp_path):
    diff = load_diff(save_diff(tmp_path / "diff.safetensors", _convnet_fixed_with_task_statistics()))
    diff.buffers["bn1.running_mean"] = diff.buffers["bn1.running_mean"][:2]
    diff.header["payload_sha256"] = None  # edited after loading on purpose: the shape check is under test
    fresh = pretrained_convnet()
    pristine = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(BaseModelMismatch, match=r"task buffer bn1\.running_mean"):
        apply_diff_(fresh, diff)
    assert all(torch.equal(v, pristine[k]) for k, v in fresh.state_dict().items())



def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _version_2_payload(path):
    """(tensors, header) of a diff file in the per-tensor layout of versions 1 and 2 (int32
    positions and values per diffed tensor), as files written before version 3 hold them."""
    diff = load_diff(path)
    tensors = {f"diff.{n}.positions": p.to(torch.int32) for n, p in diff.positions.items()}
    tensors.update({f"diff.{n}.values": v.clone() for n, v in diff.values.items()})
    tensors.update({f"head.{n}": h for n, h in diff.head.items()})
    tensors.update({f"buffer.{n}": b for n, b in diff.buffers.items()})
    header = {k: v for k, v in diff.header.items() if k != "positions_encoding"}
    return tensors, header


def _rewrite(path, out, edit, version="2", checksum=True):
    """A version-2 copy of a diff file with ``edit(tensors, header)`` applied; its checksum
    recomputed so that the structural checks, not the checksum, are what a bad payload meets.
    (Version 3's coded positions cannot repeat or leave their tensor; old files can.)"""
    tensors, header = _version_2_payload(path)
    edit(tensors, header)
    header.pop(CHECKSUM_KEY, None)
    if checksum:
        header[CHECKSUM_KEY] = payload_sha256(tensors)
    save_file(tensors, str(out), metadata={"format": FORMAT, "version": version, "header": json.dumps(header)})
    return out


def _last_diffed(path):
    """The tensor apply_diff_ reaches last: a failure there comes after every other tensor."""
    return list(load_diff(path).positions)[-1]


def _set(key, make):
    def edit(tensors, header):
        tensors[key] = make(tensors[key])
    return edit


BAD_PAYLOADS = {
    "out of range": (lambda n: _set(f"diff.{n}.positions", lambda p: torch.cat([p[:-1], p.new_tensor([10**6])])),
                     r"positions of {n} must lie in \[0, \d+\), found 1000000"),
    "negative": (lambda n: _set(f"diff.{n}.positions", lambda p: torch.cat([p.new_tensor([-1]), p[1:]])),
                 r"positions of {n} must lie in .* found -1"),
    "duplicate": (lambda n: _set(f"diff.{n}.positions", lambda p: torch.cat([p[:1], p[:-1]])),
                  r"positions of {n} repeat an entry"),
    "not finite": (lambda n: _set(f"diff.{n}.values", lambda v: torch.cat([v[:-1], v.new_tensor([float("nan")])])),
                   r"values of {n} are not all finite"),
    "one value broadcast": (lambda n: _set(f"diff.{n}.values", lambda v: v[:1].clone()),
                            r"{n} has \d+ positions but 1 values"),
    "float positions": (lambda n: _set(f"diff.{n}.positions", lambda p: p.float()),
                        r"positions of {n} must be a 1-D int32/int64 tensor"),
    "head shape": (lambda n: _set("head.classifier.weight", lambda h: h[:1].clone()),
                   r"head tensor classifier.weight has shape \(1, 16\) in the diff"),
    "integer head": (lambda n: _set("head.classifier.bias", lambda h: h.to(torch.int64)),
                     r"head tensor classifier.bias is int64 in the diff, float32 in the model"),
    "head also diffed": (lambda n: (lambda t, h: t.update({"diff.classifier.weight.positions": torch.tensor([0]),
                                                            "diff.classifier.weight.values": torch.tensor([1.0])})),
                         r"classifier.weight is both diffed and stored as a head tensor"),
}


@pytest.mark.parametrize("kind", list(BAD_PAYLOADS))
def test_a_bad_payload_is_refused_before_anything_is_written(tmp_path, kind):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny")
    last = _last_diffed(path)
    make_edit, message = BAD_PAYLOADS[kind]
    bad = _rewrite(path, tmp_path / "bad.safetensors", make_edit(last))
    base = _fresh_base()
    before = _state(base)
    with pytest.raises((DiffFileError, BaseModelMismatch)) as error:
        apply_diff_(base, load_diff(bad))
    assert str(bad) in str(error.value)                        # the file ...
    assert re.search(message.format(n=re.escape(last)), str(error.value)), str(error.value)  # ... and the tensor
    _assert_unchanged(base, before)                            # all or nothing: the shared base is untouched


def test_flipped_bytes_are_refused(tmp_path):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(DiffFileError, match=f"{re.escape(str(flipped))}: the tensor payload does not match its checksum"):
        load_diff(flipped)
    # a diff changed in memory after loading is refused by apply_diff_ itself, before writing
    diff = load_diff(path)
    name = next(iter(diff.values))
    diff.values[name][0] += 1.0
    base = _fresh_base()
    before = _state(base)
    with pytest.raises(DiffFileError, match="do not match the payload checksum"):
        apply_diff_(base, diff)
    _assert_unchanged(base, before)


def test_version_1_files_are_applied_with_a_warning_and_a_stripped_checksum_is_refused(tmp_path, tiny_batch):
    fixed = _trained_fixed(_fresh_base())
    path = save_diff(tmp_path / "d.safetensors", fixed, model_id="tiny")
    with torch.no_grad():
        expected = fixed(**tiny_batch).logits

    def as_version_1(tensors, header):
        for key in ("task", "labels"):
            header.pop(key)

    old = _rewrite(path, tmp_path / "v1.safetensors", as_version_1, version="1", checksum=False)
    with pytest.warns(UnverifiedDiffWarning, match="version-1 diffprune file: it has no payload checksum"):
        diff = load_diff(old)
    base = _fresh_base()
    apply_diff_(base, diff)
    with torch.no_grad():
        assert torch.equal(base(**tiny_batch).logits, expected)
    with pytest.warns(UnverifiedDiffWarning, match="does not say which task"):
        check_task(diff.header, "rte", source=str(old))
    stripped = _rewrite(path, tmp_path / "stripped.safetensors", lambda t, h: None, checksum=False)
    with pytest.raises(DiffFileError, match="without payload_sha256"):
        load_diff(stripped)


def test_a_diff_for_another_task_or_label_set_is_refused(tmp_path):
    fixed = _trained_fixed(_fresh_base())
    path = save_diff(tmp_path / "d.safetensors", fixed, task="rte", labels=["entailment", "not_entailment"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-2 file with its task: nothing to warn about
        assert load_diff(path, task="rte", labels=["entailment", "not_entailment"]).header["task"] == "rte"
    with pytest.raises(TaskMismatch, match="is a diff for task 'rte', not 'qnli'"):
        load_diff(path, task="qnli")
    with pytest.raises(TaskMismatch, match=r"labels \['entailment', 'not_entailment'\].*\['not_entailment', 'entailment'\]"):
        load_diff(path, task="rte", labels=["not_entailment", "entailment"])


def test_files_that_are_not_sparse_diffs_say_what_they_are(tmp_path):
    dense = save_dense_diff(tmp_path / "dense_diff.safetensors", {"x.weight": torch.ones(2)}, {}, {"method": "m"})
    with pytest.raises(DiffFileError, match="is a dense diff .* take the diff.safetensors a prune run writes"):
        load_diff(dense)
    not_safetensors = tmp_path / "diff.safetensors"
    not_safetensors.write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(DiffFileError, match="is not a safetensors file"):
        load_diff(not_safetensors)
    data = bytearray(dense.read_bytes())
    data[-1] ^= 0x01
    dense.write_bytes(bytes(data))
    with pytest.raises(DiffFileError, match="does not match its checksum"):
        load_dense_diff(dense)


def test_a_dtype_only_mismatch_names_both_dtypes(tmp_path):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny")
    base = _fresh_base().to(torch.bfloat16)
    before = _state(base)
    with pytest.raises(BaseModelMismatch, match=r"made for base model tiny in float32, .* in bfloat16: load the "
                                                 r"pretrained weights in float32"):
        apply_diff_(base, load_diff(path))
    _assert_unchanged(base, before)


# ----------------------------------------------------------------------------- version 3


def test_version_2_files_still_load_and_convert_to_version_3_exactly(tmp_path, tiny_batch):
    fixed = _trained_fixed(_fresh_base())
    with torch.no_grad():
        expected = fixed(**tiny_batch).logits
    path = save_diff(tmp_path / "d.safetensors", fixed, model_id="tiny")
    old = _rewrite(path, tmp_path / "v2.safetensors", lambda t, h: None)
    base = _fresh_base()
    apply_diff_(base, load_diff(old))
    with torch.no_grad():
        assert torch.equal(base(**tiny_batch).logits, expected)
    converted = write_diff(tmp_path / "v3.safetensors", load_diff(old))
    # canonical: the tensors and header save_diff writes (safetensors orders its metadata as it likes)
    assert read_header(converted) == read_header(path)
    written, saved = load_file(str(converted)), load_file(str(path))
    assert written.keys() == saved.keys() and all(torch.equal(written[k], saved[k]) for k in saved)
    assert converted.stat().st_size < old.stat().st_size


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16_bit_values_halve_the_value_bytes_and_load_as_saved(tmp_path, dtype):
    fixed = _trained_fixed(_fresh_base())
    full = load_diff(save_diff(tmp_path / "fp32.safetensors", fixed))
    half = load_diff(save_diff(tmp_path / f"{dtype}.safetensors", fixed, values_dtype=dtype))
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert half.header["values_dtype"] == str(torch_dtype).replace("torch.", "")
    for name, values in full.values.items():
        assert half.values[name].dtype == torch_dtype
        assert torch.equal(half.values[name], values.to(torch_dtype))
    saved = full.nonzeros * 2
    assert (tmp_path / "fp32.safetensors").stat().st_size - (tmp_path / f"{dtype}.safetensors").stat().st_size == saved


def test_values_that_overflow_float16_are_refused(tmp_path):
    fixed = _trained_fixed(_fresh_base())
    with torch.no_grad():
        fixed.values[0][0] = 1e6
    with pytest.raises(DiffFileError, match="overflow float16 .* keep them in float32"):
        save_diff(tmp_path / "d.safetensors", fixed, values_dtype="fp16")
    assert not (tmp_path / "d.safetensors").exists()


def test_coded_positions_that_do_not_decode_are_refused_naming_the_file(tmp_path):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny")
    tensors, header = load_file(str(path)), read_header(path)
    tensors["positions.upper"] = tensors["positions.upper"].clone()
    tensors["positions.upper"][-1] |= 1  # one more set bit: one position more than the header says
    header[CHECKSUM_KEY] = payload_sha256(tensors)  # a consistent checksum: the decoder is under test
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"format": FORMAT, "version": "3", "header": json.dumps(header)})
    with pytest.raises(DiffFileError, match=f"{re.escape(str(bad))}: its positions do not decode"):
        load_diff(bad)


def test_a_version_3_diff_edited_in_memory_is_refused_before_any_write(tmp_path):
    diff = load_diff(save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base())))
    name = next(iter(diff.positions))
    diff.positions[name] = torch.cat([diff.positions[name][:1], diff.positions[name][:-1]])  # a repeat
    base = _fresh_base()
    before = _state(base)
    with pytest.raises(DiffFileError, match="do not match the payload checksum"):
        apply_diff_(base, diff)
    _assert_unchanged(base, before)


def test_a_newer_version_asks_for_a_newer_diffprune(tmp_path):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()))
    tensors, header = load_file(str(path)), read_header(path)
    future = tmp_path / "v9.safetensors"
    save_file(tensors, str(future), metadata={"format": FORMAT, "version": "9", "header": json.dumps(header)})
    with pytest.raises(DiffFileError, match="version '9'; this diffprune reads versions 1, 2, 3: update diffprune"):
        load_diff(future)


# ----------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("damage,message", [
    (lambda data: b"", r"is empty \(0 bytes\)"),
    (lambda data: data[:5], r"fewer than the 8 of a safetensors header length"),
    (lambda data: data[:100], r"is truncated: its safetensors header announces \d+ bytes"),
    (lambda data: data[:-10], r"is truncated: its tensors need \d+ bytes of data, the file holds \d+"),
    (lambda data: b"\x89PNG\r\n\x1a\n" + data[8:], r"is not a safetensors file \(its first 8 bytes"),
])
def test_empty_truncated_or_foreign_files_name_the_path_and_the_fix(tmp_path, damage, message):
    path = save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(damage(path.read_bytes()))
    for read in (load_diff, read_header):
        with pytest.raises(DiffFileError, match=message) as error:
            read(broken)
        assert str(error.value).startswith(str(broken))


def test_a_one_digit_fingerprint_change_says_where_the_fingerprints_differ(tmp_path):
    diff = load_diff(save_diff(tmp_path / "d.safetensors", _trained_fixed(_fresh_base()), model_id="tiny"))
    stored = diff.header["fingerprint"]
    flipped = stored[:50] + format(int(stored[50], 16) ^ 1, "x") + stored[51:]
    diff.header["fingerprint"] = flipped
    assert flipped[:19] == stored[:19]  # what the old message printed of each: identical
    with pytest.raises(BaseModelMismatch) as error:
        apply_diff_(_fresh_base(), diff)
    text = str(error.value)
    assert flipped in text and stored in text
    assert f"first differ at character 51 of {len(stored)}" in text
    assert f"...{flipped[44:57]}... vs ...{stored[44:57]}..." in text
