"""RowLookup: an nn.Embedding's lookup reads rows of the effective weight, which is never
built whole; every other read of the pretrained tensor gets the whole effective weight."""
import pytest
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack
from torch.utils._pytree import tree_flatten
from transformers import BertForSequenceClassification

from diffprune.diff import DiffPrunedModel
from diffprune.diff_pruning_config import DiffPruningConfig
from tests.conftest import tiny_bert_config
from tests.test_reparam import HEAD, _merged_logits


def _recording_rebuilds(dm):
    """The names of the slots ``dm`` builds whole (forward or backward), in a list it fills."""
    built = []
    rebuild = dm.rebuild

    def recording(slot):
        built.append(slot.name)
        return rebuild(slot)

    dm.rebuild = recording
    return built


def test_a_bert_step_and_an_evaluation_never_build_an_embedding_table(tiny_bert, tiny_batch):
    dm = DiffPrunedModel(tiny_bert, DiffPruningConfig(alpha_init=1.0))
    built = _recording_rebuilds(dm)
    dm.train()
    dm.resample(0)
    (dm(**tiny_batch).loss + dm.penalty()).backward()
    dm.eval()
    with torch.no_grad():
        dm(**tiny_batch)
    tables = {slot.name for slot in dm.slots if isinstance(slot.owners[0][0], nn.Embedding)}
    assert len(tables) == 3  # word, position and token-type embeddings
    assert built and not tables & set(built)
    assert all(p.grad is not None for p in dm.w)  # the tables' diffs got their gradients all the same
    assert not _get_current_function_mode_stack()


class ScaledEmbedding(nn.Embedding):
    """An embedding subclass that also computes with its weight (as some models scale theirs)."""

    def forward(self, ids):
        return super().forward(ids) / self.weight.norm()


class Embedder(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embed = embedding
        self.classifier = nn.Linear(6, 2)

    def forward(self, ids):
        return self.classifier(self.embed(ids)).mean(1)


@pytest.mark.parametrize("embedding", [
    lambda: nn.Embedding(11, 6, max_norm=0.5),  # F.embedding renormalises the weight it is given
    lambda: ScaledEmbedding(11, 6),
], ids=["max_norm", "subclass_reads_weight"])
def test_other_reads_of_an_embedding_weight_get_the_whole_effective_weight(embedding):
    torch.manual_seed(0)
    model = Embedder(embedding()).eval()
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(1))
    dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=HEAD)).eval()
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.2)
    built = _recording_rebuilds(dm)
    with torch.no_grad():
        got = dm(ids)
    assert "embed.weight" in built
    assert torch.allclose(got, _merged_logits(model, dm.dense_diff(), ids), atol=1e-6)
    dm.train()
    dm.resample(0)
    dm(ids).sum().backward()
    assert dm.w[0].grad is not None and dm.w[0].grad.abs().sum() > 0
    assert model.embed.weight is dm.slots[0].base  # theta_0 back in place
    assert not _get_current_function_mode_stack()


def test_a_forward_that_raises_leaves_no_mode_behind(tiny_bert, tiny_batch):
    dm = DiffPrunedModel(tiny_bert, DiffPruningConfig()).train()
    dm.resample(0)
    dm(**tiny_batch)

    def fail(module, args):
        raise RuntimeError("inside the embedding")

    # registered after the wrapper's own pre-hook: the row lookup has begun when it raises
    handle = tiny_bert.bert.embeddings.word_embeddings.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="inside the embedding"):
        dm(**tiny_batch)
    handle.remove()
    assert not _get_current_function_mode_stack()
    assert not dm._row_lookups
    dm(**tiny_batch).loss.backward()  # and the wrapper still works


def test_row_lookups_in_a_larger_vocabulary_read_only_the_batch_rows():
    """A training forward allocates nothing the size of the vocabulary (here 4,000 x 16 entries
    against a batch of 4 x 8 ids): the lookup computes the batch's rows only."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=4000)).eval()
    dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=r"^classifier\.")).train()
    dm.resample(0)
    ids = torch.randint(0, 4000, (4, 8), generator=torch.Generator().manual_seed(0))
    table = model.bert.embeddings.word_embeddings.weight.numel()
    largest = []

    class Largest(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            inputs = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
            if isinstance(result, torch.Tensor) and result.layout == torch.strided and not any(
                    leaf.untyped_storage().data_ptr() == result.untyped_storage().data_ptr() for leaf in inputs):
                largest.append(result.numel())  # new memory, not a view or a detached alias
            return result

    with Largest():
        loss = dm(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss
    assert max(largest) < table
    loss.backward()
