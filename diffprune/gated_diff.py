"""The L0 phase's autograd function: theta_0 + z(s) * w of one tensor, and its exact backward.

Both gradients of a diffed entry are elementwise in g = d loss / d delta (delta = z * w), the
step's gate sample s and w:

    d loss/d w     = g * z(s) (* z_g)
    d loss/d alpha = g * w (* z_g) * dz/dalpha(s)

so backward needs no saved activation of its own: it reads the sample and w again, chunk by
chunk (``diffprune.chunked``). ``diffprune.diff.DiffPrunedModel`` applies it per tensor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from diffprune.chunked import chunks, flat
from diffprune.gates import gate_slope, stretch
from diffprune.reparam import Slot

if TYPE_CHECKING:
    from diffprune.diff import DiffPrunedModel


def _stretched(s_part: torch.Tensor, left: float, right: float):
    """(scaled, z_bar, z) of an fp32 chunk of the sample: scaled = (r - l) s, z_bar = scaled + l,
    z = clamp(z_bar, 0, 1); the slope below reuses scaled and z_bar."""
    scaled = s_part.mul(right - left)
    z_bar = scaled.add(left)
    return scaled, z_bar, z_bar.clamp(0.0, 1.0)


def diff_gradient_chunk(grad: torch.Tensor, w: torch.Tensor, s: torch.Tensor, left: float, right: float,
                        z_group: torch.Tensor | None, out_w: torch.Tensor | None = None,
                        out_alpha: torch.Tensor | None = None, group_dot: bool = True):
    """(d loss/d w, d loss/d alpha, group part) of one flat chunk, from ``grad`` = d loss/d delta
    there, w and the step's sample s (any float dtype; the maths is fp32). The group part is
    sum(grad * w * z_i) (None without a group gate, or with ``group_dot=False``).

    The gate and its slope come from one read of the sample, in as few passes as the maths
    allows (this is most of the L0 phase's extra time per step): dz/dalpha = (r - l) s (1 - s)
    = scaled - scaled * s where 0 < z_bar < 1, else 0.
    """
    s_part = s.float()
    scaled, z_bar, z_elem = _stretched(s_part, left, right)
    g_w = torch.mul(grad, z_elem, out=out_w)
    g_alpha = torch.mul(grad, w, out=out_alpha)
    group_part = None
    if z_group is not None:
        g_w.mul_(z_group)
        if group_dot:
            group_part = torch.dot(g_alpha.float(), z_elem)
        g_alpha.mul_(z_group)
    slope = torch.addcmul(scaled, scaled, s_part, value=-1.0)
    # hardtanh's backward: slope where 0 < z_bar < 1, else 0, in one pass
    torch.ops.aten.hardtanh_backward.grad_input(slope, z_bar, 0.0, 1.0, grad_input=slope)
    g_alpha.mul_(slope)
    return g_w, g_alpha, group_part


class GatedDiff(torch.autograd.Function):
    """theta_0 + z(s) * w for one tensor; backward recomputes z from the step's sample s.

    Saves only references to existing tensors (w, alpha), and works chunk by chunk, so a
    step adds no tensor-sized intermediate to memory beyond the per-step sample buffer and
    the gradients themselves.
    """

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, model: "DiffPrunedModel", slot: Slot):
        ctx.model, ctx.slot = model, slot
        ctx.save_for_backward(w, alpha)
        ctx.has_group = group_alpha is not None
        return model.rebuild(slot)

    @staticmethod
    def backward(ctx, grad):
        w, alpha = ctx.saved_tensors
        return (*diff_backward(ctx.model, ctx.slot, w, alpha, ctx.has_group, grad), None, None)


class GatedRows(torch.autograd.Function):
    """Rows ``ids`` of theta_0 + z(s) * w for one tensor: an embedding lookup of the effective
    weight without building it (``diffprune.reparam_modes.RowLookup``). The values are those
    rows of ``GatedDiff``'s output bit for bit, and backward passes on the very gradient the
    lookup of the whole effective weight would have produced (``embedding_backward``: the
    padding row and ``scale_grad_by_freq`` handled as ``F.embedding`` handles them)."""

    @staticmethod
    def forward(ctx, w, alpha, group_alpha, ids, model: "DiffPrunedModel", slot: Slot, padding_idx: int,
                scale_grad_by_freq: bool):
        ctx.model, ctx.slot = model, slot
        ctx.padding_idx, ctx.scale_grad_by_freq = padding_idx, scale_grad_by_freq
        ctx.save_for_backward(w, alpha, ids)
        ctx.has_group = group_alpha is not None
        return model.rebuild_rows(slot, ids)

    @staticmethod
    def backward(ctx, grad):
        w, alpha, ids = ctx.saved_tensors
        # row-sparse as the whole weight's lookup gives it (dense with scale_grad_by_freq, which
        # torch's sparse embedding backward does not support)
        sparse = not ctx.scale_grad_by_freq
        grad = torch.ops.aten.embedding_backward(grad, ids, w.shape[0], ctx.padding_idx, ctx.scale_grad_by_freq, sparse)
        return (*diff_backward(ctx.model, ctx.slot, w, alpha, ctx.has_group, grad), None, None, None, None, None)


def diff_backward(model: "DiffPrunedModel", slot: Slot, w: torch.Tensor, alpha: torch.Tensor, has_group: bool,
                  grad: torch.Tensor):
    """(d loss/d w, d loss/d alpha, d loss/d group_alpha) of one slot from ``grad`` = d loss /
    d delta, dense or row-sparse (an embedding lookup's); with ``model.keeps_delta_grad`` the
    model keeps ``grad`` and w and alpha get none."""
    if model.keeps_delta_grad:
        return _delta_backward(model, slot, w, has_group, grad)
    if grad.is_sparse:
        return _sparse_backward(model, slot, w, alpha, has_group, grad)
    left, right = model.config.left, model.config.right
    s = flat(model.sample_view(slot))
    grad_flat, w_flat = flat(grad), flat(w)
    grad_w = torch.empty_like(w)
    grad_alpha = torch.empty_like(alpha)
    grad_w_flat, grad_alpha_flat = grad_w.view(-1), grad_alpha.view(-1)
    z_group = model.group_gate(slot.index) if has_group else None
    group_total = torch.zeros((), dtype=torch.float32, device=w.device)
    for part in chunks(s.numel()):
        _, _, group_part = diff_gradient_chunk(grad_flat[part], w_flat[part], s[part], left, right, z_group,
                                               out_w=grad_w_flat[part], out_alpha=grad_alpha_flat[part])
        if group_part is not None:
            group_total += group_part
    grad_group = None
    if z_group is not None:
        grad_group = torch.zeros_like(model.group_alpha)
        grad_group[slot.index] = group_total * gate_slope(model.group_sample[slot.index], left, right)
    return grad_w, grad_alpha, grad_group


def _delta_backward(model: "DiffPrunedModel", slot: Slot, w: torch.Tensor, has_group: bool, grad: torch.Tensor):
    """Keep d loss / d delta for the optimizer, which forms the gradients of w and alpha from it
    chunk by chunk at its step (``DiffPrunedModel.keep_delta_grad``): w and alpha get no
    gradient here. A group gate's gradient is a number per tensor and goes the usual way."""
    model._add_delta_grad(slot, grad)
    if not has_group:
        return None, None, None
    left, right = model.config.left, model.config.right
    # d/d alpha_g of sum(grad * w * z_i * z_g) = sum(grad * w * z_i) * dz_g/d alpha_g
    if grad.is_sparse:
        grad = grad.coalesce()
        rows = grad.indices()[0]
        _, _, z_elem = _stretched(model.sample_view(slot)[rows].float(), left, right)
        total = torch.dot((grad.values() * w.detach()[rows]).reshape(-1), z_elem.reshape(-1))
    else:
        s, grad_flat, w_flat = flat(model.sample_view(slot)), flat(grad), flat(w)
        total = torch.zeros((), dtype=torch.float32, device=w.device)
        for part in chunks(s.numel()):
            _, _, z_elem = _stretched(s[part].float(), left, right)
            total += torch.dot(torch.mul(grad_flat[part], w_flat[part]).float(), z_elem)
    grad_group = torch.zeros_like(model.group_alpha)
    grad_group[slot.index] = total * gate_slope(model.group_sample[slot.index], left, right)
    return None, None, grad_group


def _sparse_backward(model: "DiffPrunedModel", slot: Slot, w: torch.Tensor, alpha: torch.Tensor, has_group: bool,
                     grad: torch.Tensor):
    """The same gradients from a row-sparse one (an embedding lookup's): only its rows."""
    left, right = model.config.left, model.config.right
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    s = model.sample_view(slot)[rows]
    z_elem = stretch(s, left, right)
    g_w = values * z_elem
    g_alpha = values * w.detach()[rows]
    grad_group = None
    if has_group:
        z_group = model.group_gate(slot.index)
        g_w.mul_(z_group)
        grad_group = torch.zeros_like(model.group_alpha)
        grad_group[slot.index] = torch.dot(g_alpha.reshape(-1), z_elem.reshape(-1)) * gate_slope(
            model.group_sample[slot.index], left, right)
        g_alpha.mul_(z_group)
    g_alpha.mul_(gate_slope(s, left, right))
    if model.row_sparse_diff_grads:
        # The rows are unique (coalesced above): hand the gradients on row-sparse; the
        # optimizer densifies them one chunk at a time, so no vocabulary-sized dense
        # gradient is made.
        index = rows.unsqueeze(0)
        return (torch.sparse_coo_tensor(index, g_w, w.shape, is_coalesced=True, check_invariants=False),
                torch.sparse_coo_tensor(index, g_alpha, alpha.shape, is_coalesced=True, check_invariants=False),
                grad_group)
    grad_w = torch.zeros_like(w)
    grad_alpha = torch.zeros_like(alpha)
    grad_w.index_put_((rows,), g_w, accumulate=True)
    grad_alpha.index_put_((rows,), g_alpha, accumulate=True)
    return grad_w, grad_alpha, grad_group
