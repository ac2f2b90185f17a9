"""GatedRows (an embedding lookup of the effective weight, rows only) against the lookup of the
whole effective weight (GatedDiff): the same values and the same gradients, bit for bit."""
import pytest
import torch
from torch import nn

from tests.gated_diff_setup import training_diff

HEAD = r"^classifier\."


class Lookups(nn.Module):
    """Two embeddings with what F.embedding's backward treats specially: a padding row and
    scale_grad_by_freq; ids repeat within the batch."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(13, 6, padding_idx=2)
        self.scaled = nn.Embedding(13, 6, padding_idx=-1, scale_grad_by_freq=True)
        self.mix = nn.Linear(6, 6)
        self.classifier = nn.Linear(6, 2)

    def forward(self, ids):
        return self.classifier(torch.tanh(self.mix(self.words(ids) * self.scaled(ids)))).mean(1)


def _ids():
    ids = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(4))
    ids[0, :3] = 2  # the padding row, repeated
    ids[1, :2] = 12  # the last row, which padding_idx=-1 names
    return ids


def _run(state, rows: bool, structured: bool, keep: bool):
    """(output, gradients) of one training forward + backward, and an evaluation output."""
    model = Lookups()
    model.load_state_dict(state)
    dm = training_diff(model, HEAD, structured, keep_delta_grad=keep)
    dm.row_lookups = rows
    dm.resample(2)
    out = dm(_ids())
    (out.square().mean() + dm.penalty(alpha_gradient=not keep)).backward()
    if keep:
        grads = [dm._delta_grads[slot.index] for slot in dm.slots]
    else:
        grads = [p.grad for p in list(dm.w) + list(dm.alpha)]
    grads = [g.to_dense() if g.is_sparse else g for g in grads]
    if structured:
        grads.append(dm.group_alpha.grad)
    dm.eval()
    with torch.no_grad():
        evaluated = dm(_ids())
    return out.detach(), grads, evaluated


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("keep", [False, True], ids=["grads", "kept_delta_grad"])
def test_row_lookup_equals_the_lookup_of_the_whole_effective_weight(structured, keep):
    torch.manual_seed(0)
    state = Lookups().state_dict()
    whole_out, whole_grads, whole_eval = _run(state, False, structured, keep)
    rows_out, rows_grads, rows_eval = _run(state, True, structured, keep)
    assert torch.equal(rows_out, whole_out)
    assert torch.equal(rows_eval, whole_eval)
    assert len(rows_grads) == len(whole_grads)
    for got, want in zip(rows_grads, whole_grads):
        assert torch.equal(got, want)
    # the padding row gets no gradient from the lookup: its w stays where it is
    if not keep:
        assert not whole_grads[0][2].any()
