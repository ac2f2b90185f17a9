"""Layer labels (diffprune/layers.py): from the model's own block list, the name regex as fallback."""
from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest
from torch import nn

from diffprune.layers import block_prefixes, is_head, is_layer_norm, layer_labels, layer_of, layer_order, layer_rank


class Block(nn.Module):
    """A residual-style block: more than a bare layer."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 1)
        self.bn = nn.BatchNorm2d(width)


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.BatchNorm2d(4)


class ResNetLike(nn.Module):   # torchvision ResNet: layer1.0, layer1.1, layer2.0, ...
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(Block(), Block())
        self.layer2 = nn.Sequential(Block(), Block())
        self.fc = nn.Linear(4, 2)


class MobileNetLike(nn.Module):  # torchvision MobileNet: features.N.block.0 (stem and last conv differ)
    def __init__(self):
        super().__init__()
        inverted = [nn.Module() for _ in range(3)]
        for module in inverted:
            module.block = nn.Sequential(Block())
        self.features = nn.Sequential(Stem(), *inverted, Stem())
        self.classifier = nn.Sequential(nn.Linear(4, 4), nn.Hardswish(), nn.Linear(4, 2))


class ViTLike(nn.Module):       # torchvision ViT: encoder.layers.encoder_layer_N, heads.head
    def __init__(self):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, 4, 1)
        self.encoder = nn.Module()
        self.encoder.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", Block()) for i in range(3)))
        self.encoder.ln = nn.LayerNorm(4)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(4, 2)))


class EfficientNetLike(nn.Module):  # lukemelas EfficientNet: _blocks.N, _fc
    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 4, 1)
        self._blocks = nn.ModuleList(Block() for _ in range(4))
        self._fc = nn.Linear(4, 2)


def labels_of(model, head):
    return layer_labels(model, rf"^(?:{head})\.")


def test_resnet_blocks_are_numbered_across_stages():
    labels = labels_of(ResNetLike(), "fc")
    assert labels["layer1.0.conv.weight"] == "layer_0" and labels["layer1.1.bn.bias"] == "layer_1"
    assert labels["layer2.0.conv.weight"] == "layer_2" and labels["layer2.1.conv.weight"] == "layer_3"
    assert labels["conv1.weight"] == "other" and labels["fc.weight"] == "head"


def test_mobilenet_features_are_the_layers_not_their_inner_block_lists():
    model = MobileNetLike()
    assert block_prefixes(model, r"^classifier\.") == [f"features.{i}" for i in range(5)]
    labels = labels_of(model, "classifier")
    assert [labels[f"features.{i}.block.0.conv.weight"] for i in (1, 2, 3)] == ["layer_1", "layer_2", "layer_3"]
    assert labels["features.4.conv.weight"] == "layer_4" and labels["classifier.0.weight"] == "head"


def test_vit_and_efficientnet_blocks():
    vit = labels_of(ViTLike(), "heads")
    assert vit["encoder.layers.encoder_layer_2.conv.weight"] == "layer_2"
    assert vit["encoder.ln.weight"] == "other" and vit["heads.head.weight"] == "head"
    efficient = labels_of(EfficientNetLike(), "_fc")
    assert efficient["_blocks.3.conv.weight"] == "layer_3" and efficient["_fc.weight"] == "head"


def test_transformers_block_lists(tiny_bert):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    labels = layer_labels(tiny_bert, r"^classifier\.")
    assert labels["bert.encoder.layer.1.output.dense.weight"] == "layer_1"
    assert labels["bert.embeddings.word_embeddings.weight"] == "embeddings"
    assert labels["bert.pooler.dense.weight"] == "other"
    # the regex and the block list agree where both apply
    assert all(label == layer_of(name, r"^classifier\.") for name, label in labels.items())
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=32))
    assert block_prefixes(llama, r"^score\.") == ["model.layers.0", "model.layers.1"]
    assert layer_order(set(layer_labels(llama, r"^score\.").values())) == [
        "embeddings", "layer_0", "layer_1", "other", "head"]


def test_the_head_is_what_the_pattern_finds_anywhere_in_a_name():
    assert is_head("classifier.weight", r"^classifier\.")
    assert is_head("model.score.weight", r"(^|\.)score\.")  # found anywhere, not only at the start
    assert not is_head("bert.classifier_norm.weight", r"(^|\.)classifier\.")
    assert not is_head("classifier.weight", None)  # no head known: nothing is the head
    # the anchored exact-names pattern the loader's head becomes (models.head_pattern_for)
    assert is_head("qa_outputs.bias", r"^(?:qa_outputs\.bias|qa_outputs\.weight)$")
    assert not is_head("qa_outputs.bias_extra", r"^(?:qa_outputs\.bias|qa_outputs\.weight)$")


def test_layer_order_embeddings_blocks_by_depth_others_head_last():
    labels = ["head", "layer_10", "pooler", "layer_2", "other", "embeddings", "layer_2"]
    assert layer_order(labels) == ["embeddings", "layer_2", "layer_10", "other", "pooler", "head"]
    assert sorted(set(labels), key=layer_rank) == layer_order(labels)
    # a label that only looks like a block sorts with the other labels
    assert layer_order(["layer_norm", "layer_1", "head"]) == ["layer_1", "layer_norm", "head"]


def test_import_loads_no_torch():
    # The analysis (summary.csv -> figures) orders layers with layer_rank and runs without torch.
    code = "import sys, diffprune.layers, diffprune.analysis.figures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_a_block_list_the_name_regex_decides():
    model = nn.Sequential(OrderedDict(embeddings=nn.Embedding(5, 4), fc=nn.Linear(4, 2)))
    assert layer_labels(model, r"^fc\.") == {"embeddings.weight": "embeddings", "fc.weight": "head", "fc.bias": "head"}


@pytest.mark.parametrize("module, expected", [(nn.LayerNorm(4), True), (nn.BatchNorm1d(4), False), (nn.Linear(2, 2), False)])
def test_is_layer_norm(module, expected):
    assert is_layer_norm(module) is expected


def test_library_norm_classes_count_as_layer_norms():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert is_layer_norm(LlamaRMSNorm(4))
