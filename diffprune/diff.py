"""Adaptive diff pruning, L0 phase: theta = theta_0 + z * w with Hard-Concrete gates z.

``DiffPrunedModel(model, config)`` attaches one diff (w, alpha) to every unique pretrained
tensor of any torch model (the task head, matched by ``config.head_pattern``, is trained
densely and not penalised). The pretrained tensors are never written to.

Noise: one uniform sample per optimizer step (``resample(step)``), so every forward and
backward of that step — gradient accumulation and the recompute of saved weights included —
sees the same mask. Evaluation and export use one fixed sample drawn from
``config.mask_seed`` (the paper also samples once after training; fixing the seed makes the
exported diff reproducible). A training step's sample is stored in 16 bits (it stands for
noise; halving the largest per-step buffer pays), the fixed sample in fp32: it decides which
entries of the stored diff are exactly zero, and 16-bit rounding flips ~1e-4 of them.
"""
from __future__ import annotations

import torch
from torch import nn

from diffprune.chunked import chunks, flat, row_positions, scattered_chunks
from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.gated_diff import GatedDiff, GatedRows, diff_gradient_chunk
from diffprune.gates import ExpectedL0, draw_gate_sample_, logistic_s_, stretch
from diffprune.reparam import ReparametrizedModel, Slot
from diffprune.seeding import GROUP_NOISE_STRIDE, generator_seed

_FIXED_SAMPLE_STEP = -1  # the step number reserved for the evaluation / export sample


TRAIN_SAMPLE_DTYPE = torch.float16  # a training step's gate sample
FIXED_SAMPLE_DTYPE = torch.float32  # the evaluation / export sample


class DiffPrunedModel(ReparametrizedModel):
    """A pretrained model plus a trainable gated diff on every pretrained tensor."""

    sparse_embedding_grads = True
    # Whether w and alpha of a tensor that got a row-sparse gradient (an embedding's) receive
    # row-sparse gradients too; only for an optimizer that accepts them (AdamWInBackward).
    row_sparse_diff_grads = False

    def __init__(self, model: nn.Module, config: DiffPruningConfig | None = None) -> None:
        config = config or DiffPruningConfig()
        super().__init__(model, config.head_pattern)
        self.config = config
        self.w = nn.ParameterList(
            nn.Parameter(torch.full_like(slot.base, config.w_init, dtype=torch.float32)) for slot in self.slots
        )
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.full_like(slot.base, config.alpha_init, dtype=torch.float32)) for slot in self.slots
        )
        self.group_alpha = (
            nn.Parameter(torch.full((len(self.slots),), config.alpha_init)) if config.structured else None
        )
        device = self.slots[0].base.device
        # s = sigmoid(logit(u) + alpha) of the current sample, for every diffed entry (flat).
        # A training step's is kept in fp16: it is the largest per-step buffer, the gate maths
        # reads it into fp32 chunk by chunk, and a step of 2^-11 in s is far below the noise it
        # represents. The fixed evaluation / export sample is fp32 (see ``_draw``).
        self.register_buffer("sample", torch.empty(self.diffed_params, dtype=TRAIN_SAMPLE_DTYPE, device=device),
                             persistent=False)
        self.register_buffer("group_sample", torch.empty(len(self.slots), device=device), persistent=False)
        self._sample_key: tuple | None = None
        # Set by penalty(alpha_gradient=False) for add_penalty_gradient_; reset by resample.
        self._penalty_pending = False
        self._penalty_group_open: torch.Tensor | None = None
        # d loss / d delta, kept by backward instead of the gradients of w and alpha once
        # ``keep_delta_grad`` is called; only the slots in _delta_grads have one this step.
        self.keeps_delta_grad = False
        self._delta_grads: dict[int, torch.Tensor] = {}  # slot index -> this step's (dense or row-sparse)

    # -- noise -------------------------------------------------------------------------
    def _draw(self, step: int, seed: int, dtype: torch.dtype) -> None:
        if self.sample.dtype != dtype:
            # Switching between training and the fixed sample: free the old buffer before the
            # new one is allocated, so the two never coexist.
            device = self.sample.device
            self.sample = None
            self.sample = torch.empty(self.diffed_params, dtype=dtype, device=device)
        with torch.no_grad():
            draw_gate_sample_(self.sample, [(slot.offset, self.alpha[slot.index]) for slot in self.slots], seed, step)
            if self.group_alpha is not None:
                g = torch.Generator(device=self.group_sample.device).manual_seed(
                    generator_seed(seed, step + 1, stride=GROUP_NOISE_STRIDE))
                self.group_sample.uniform_(generator=g)
                logistic_s_(self.group_sample, self.group_alpha)
        self._sample_key = (step, seed, self._alpha_version())

    def _alpha_version(self) -> tuple:
        # Parameters' in-place version counters change whenever the optimizer updates them.
        versions = tuple(a._version for a in self.alpha)
        return versions + ((self.group_alpha._version,) if self.group_alpha is not None else ())

    def resample(self, step: int) -> None:
        """Draw this optimizer step's gate noise (call once per step, before its forwards)."""
        self._penalty_pending = False
        self._draw(step, self.config.mask_seed + 1, TRAIN_SAMPLE_DTYPE)

    def use_fixed_sample(self) -> None:
        """Switch to the one fixed, seed-reproducible sample used for evaluation and export."""
        key = (_FIXED_SAMPLE_STEP, self.config.mask_seed, self._alpha_version())
        if self._sample_key != key:
            self._draw(_FIXED_SAMPLE_STEP, self.config.mask_seed, FIXED_SAMPLE_DTYPE)

    def sample_view(self, slot: Slot) -> torch.Tensor:
        """The slot's part of the current sample (16-bit while training); ``stretch`` computes in fp32."""
        return self.sample[slot.offset: slot.offset + slot.numel].view(slot.shape)

    def group_gate(self, index: int) -> torch.Tensor:
        return stretch(self.group_sample[index], self.config.left, self.config.right)

    # -- effective weights -------------------------------------------------------------
    def _choose_sample(self) -> None:
        # A training forward with gradients uses the step's sample; evaluation (or a forward
        # before any resample) the fixed one.
        if self._sample_key is None or not (self.training and torch.is_grad_enabled()):
            if not self.training or self._sample_key is None:
                self.use_fixed_sample()

    def effective(self, slot: Slot) -> torch.Tensor:
        self._choose_sample()
        if torch.is_grad_enabled():
            return GatedDiff.apply(self.w[slot.index], self.alpha[slot.index], self.group_alpha, self, slot)
        return self.rebuild(slot)

    row_lookups = True

    def effective_rows(self, slot: Slot, ids: torch.Tensor, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
        self._choose_sample()
        if torch.is_grad_enabled():
            return GatedRows.apply(self.w[slot.index], self.alpha[slot.index], self.group_alpha, ids, self, slot,
                                   padding_idx, scale_grad_by_freq)
        return self.rebuild_rows(slot, ids)

    def rebuild(self, slot: Slot) -> torch.Tensor:
        """theta_0 + z * w of one slot, built chunk by chunk (no tensor-sized temporaries)."""
        with torch.no_grad():
            out = torch.empty_like(slot.base)
            s, base, w, out_flat = flat(self.sample_view(slot)), flat(slot.base), flat(self.w[slot.index]), out.view(-1)
            z_group = self.group_gate(slot.index) if self.group_alpha is not None else None
            left, right = self.config.left, self.config.right
            for part in chunks(s.numel()):
                if out.dtype == torch.float32:
                    # z in the output chunk itself, by stretch's operations: no temporaries
                    # between the activations of the forward (they would fragment the heap)
                    z = out_flat[part].copy_(s[part]).mul_(right - left).add_(left).clamp_(0.0, 1.0)
                else:
                    z = stretch(s[part], left, right)
                if z_group is not None:
                    z.mul_(z_group)
                torch.addcmul(base[part], z, w[part], out=out_flat[part])
        return out

    def rebuild_rows(self, slot: Slot, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``rebuild(slot)`` (an embedding lookup's result), by the same operations
        on those rows only, so bit for bit the same values."""
        with torch.no_grad():
            flat_ids = ids.reshape(-1)
            out = torch.empty((flat_ids.numel(), *slot.shape[1:]), dtype=slot.base.dtype, device=slot.base.device)
            s = self.sample_view(slot).index_select(0, flat_ids)
            left, right = self.config.left, self.config.right
            if out.dtype == torch.float32:
                z = out.copy_(s).mul_(right - left).add_(left).clamp_(0.0, 1.0)
            else:
                z = stretch(s, left, right)
            if self.group_alpha is not None:
                z.mul_(self.group_gate(slot.index))
            torch.addcmul(slot.base.index_select(0, flat_ids), z, self.w[slot.index].index_select(0, flat_ids), out=out)
        return out.view(*ids.shape, *slot.shape[1:])

    # -- the penalty and the result ----------------------------------------------------
    def expected_l0(self) -> torch.Tensor:
        """Closed-form expected number of nonzero diff entries (structured: product form)."""
        self._check_usable()
        return ExpectedL0.apply(self.config.log_ratio, self.group_alpha, *self.alpha)

    def penalty(self, alpha_gradient: bool = True) -> torch.Tensor:
        """lambda * expected L0.

        ``alpha_gradient=False``: the value, differentiable in the group gates only; the
        per-entry gradient on alpha is left to ``add_penalty_gradient_``, which an optimizer
        stepping inside backward applies to each alpha tensor just before its update, so no
        d-sized penalty gradient is ever built (with autograd it is built for every alpha
        at once, at the end of backward). The loss must then take the penalty with weight 1.
        """
        self._check_usable()
        if alpha_gradient:
            return self.config.l0_lambda * self.expected_l0()
        c = self.config.log_ratio
        if self.group_alpha is not None:
            # The group factor of d penalty / d alpha_i, fixed now: the group gates are updated
            # only after every alpha of the step.
            self._penalty_group_open = torch.sigmoid(self.group_alpha.detach() - c).clone()
        self._penalty_pending = True
        return self.config.l0_lambda * ExpectedL0.apply(c, self.group_alpha, *(a.detach() for a in self.alpha))

    @torch.no_grad()
    def add_penalty_gradient_(self, index: int, grad: torch.Tensor, part: slice | None = None) -> None:
        """Add d penalty / d alpha[index] to ``grad`` in place, chunk by chunk (after
        ``penalty(False)``): to alpha's whole gradient, or with ``part`` (a slice of the flat
        alpha) to the flat gradient of those entries."""
        if not self._penalty_pending:
            raise RuntimeError("add_penalty_gradient_ needs penalty(alpha_gradient=False) first in this step")
        grad_flat = grad.view(-1)
        start = 0 if part is None else part.start
        for sub in chunks(grad_flat.numel()):
            grad_flat[sub] += self._penalty_gradient(index, slice(start + sub.start, start + sub.stop))

    def _penalty_gradient(self, index: int, part: slice) -> torch.Tensor:
        """d penalty / d alpha[index] on one flat chunk (a new tensor)."""
        c, scale = self.config.log_ratio, self.config.l0_lambda
        if self.group_alpha is not None:
            scale = self._penalty_group_open[index] * scale
        p = torch.sigmoid(flat(self.alpha[index].detach())[part] - c)
        # d sigmoid(a - c)/da = p (1 - p), in the operations of ExpectedL0's backward (so every
        # optimizer gets autograd's bits); a tensor scale (the group factor) stays on the
        # device: reading it as a number would wait for the GPU once per tensor
        return p.mul_(1 - p).mul_(scale)

    def penalty_gradient_applied(self) -> None:
        """The optimizer has added the pending penalty gradient (``penalty(False)``) to alpha: a
        later step without a new ``penalty`` call must not add it again."""
        self._penalty_pending = False

    # -- the gradient of delta, kept instead of those of w and alpha ------------------------
    def keep_delta_grad(self) -> None:
        """From now on backward keeps d loss / d delta instead of giving w and alpha their
        gradients, for an optimizer that forms those chunk by chunk at its step
        (``diffprune.delta_adamw.DeltaGradAdamW``): both are elementwise in d loss / d delta,
        the step's sample, w and alpha, so nothing is lost, and one gradient per diffed entry
        is held instead of two. What is kept is autograd's own gradient of each effective
        weight, as backward hands it over (no copy; an embedding lookup's stays row-sparse:
        for word embeddings, half of a BERT's entries, only the batch's rows). Like ``.grad``
        in full finetuning it exists from backward to the step and is dropped by the
        optimizer's ``zero_grad``, so the next forward's activations reuse its memory. The
        group gates' gradients still arrive as ``.grad``."""
        self.keeps_delta_grad = True
        self._delta_grads = {}

    def clear_delta_grad(self) -> None:
        """Drop the kept d loss / d delta (the optimizer's ``zero_grad``)."""
        self._delta_grads = {}

    @torch.no_grad()
    def _add_delta_grad(self, slot: Slot, grad: torch.Tensor) -> None:
        # Never written to in place: autograd may hand the same tensor to other nodes too.
        grad = grad.coalesce() if grad.is_sparse else grad.contiguous()
        kept = self._delta_grads.get(slot.index)
        if kept is None:
            kept = grad
        elif kept.is_sparse and grad.is_sparse:  # gradient accumulation
            kept = (kept + grad).coalesce()
        elif kept.is_sparse or grad.is_sparse:  # tied weights: a lookup's and a projection's
            dense, sparse = (grad, kept) if kept.is_sparse else (kept, grad)
            kept = dense.float().index_add(0, sparse.indices()[0], sparse.values())
        else:  # a tensor used twice in one forward, or gradient accumulation
            kept = kept.float() + grad
        self._delta_grads[slot.index] = kept

    def diff_grads_present(self, slot: Slot) -> tuple[bool, bool]:
        """Whether w and alpha of ``slot`` have a gradient formed from the kept d loss / d delta
        (alpha also has the pending penalty's), as ``diff_grad_chunks`` would yield them."""
        kept = slot.index in self._delta_grads
        return kept, kept or self._penalty_pending

    @torch.no_grad()
    def diff_grad_chunks(self, slot: Slot):
        """(part, d loss/d w, d loss/d alpha) of ``slot`` chunk by chunk (flat slices, new fp32
        tensors, None where ``diff_grads_present`` says there is none), formed from the kept
        d loss / d delta by the operations autograd's backward uses: w's is grad * z (* z_g),
        alpha's grad * w (* z_g) * dz/dalpha, plus the pending penalty gradient. Read before
        the chunk of w and alpha is updated: alpha's depends on w and on alpha itself.

        A row-sparse kept gradient (an embedding lookup's: the batch's rows of a vocabulary)
        has its gate maths done on the stored rows only, before the first chunk; off them the
        gradients are zero (plus the penalty's for alpha), as the dense maths gives them."""
        left, right = self.config.left, self.config.right
        w_flat = flat(self.w[slot.index].detach())
        s = flat(self.sample_view(slot))
        kept = self._delta_grads.get(slot.index)
        parts = list(chunks(slot.numel))
        z_group = self.group_gate(slot.index) if self.group_alpha is not None else None
        rows = None
        if kept is not None and kept.is_sparse:
            positions = row_positions(kept)
            g_w_rows, g_alpha_rows, _ = diff_gradient_chunk(kept.values().reshape(-1), w_flat[positions], s[positions],
                                                            left, right, z_group, group_dot=False)
            rows = (scattered_chunks(positions, g_w_rows, parts), scattered_chunks(positions, g_alpha_rows, parts))
        for i, part in enumerate(parts):
            g_w = g_alpha = None
            if rows is not None:
                # alpha's: the penalty's gradient plus the gate part on the rows (the sum the
                # dense maths makes, in the other order: IEEE addition commutes)
                g_w = rows[0](i)
                g_alpha = rows[1](i, self._penalty_gradient(slot.index, part) if self._penalty_pending else None)
            elif kept is not None:
                g_w, g_alpha, _ = diff_gradient_chunk(kept.view(-1)[part], w_flat[part], s[part], left, right, z_group,
                                                      group_dot=False)
            if self._penalty_pending and rows is None:
                penalty = self._penalty_gradient(slot.index, part)
                g_alpha = penalty if g_alpha is None else g_alpha.add_(penalty)
            yield part, g_w, g_alpha

    @torch.no_grad()
    def dense_diff(self) -> dict[str, torch.Tensor]:
        """delta = z * w under the fixed sample, per diffed tensor (exact zeros where z = 0)."""
        self._check_usable()
        self.use_fixed_sample()
        out = {}
        for slot in self.slots:
            z = stretch(self.sample_view(slot), self.config.left, self.config.right)
            if self.group_alpha is not None:
                z.mul_(self.group_gate(slot.index))
            out[slot.name] = (z * self.w[slot.index]).to(torch.float32)
        return out

    def release(self) -> nn.Module:
        """As ``ReparametrizedModel.release``, and free this wrapper's O(d) state (w, alpha, sample)."""
        model = super().release()
        self.w, self.alpha, self.group_alpha = nn.ParameterList(), nn.ParameterList(), None
        self.keeps_delta_grad, self._delta_grads = False, {}
        self.sample = torch.empty(0, dtype=self.sample.dtype, device=self.sample.device)
        return model

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        groups = {"w": list(self.w), "alpha": list(self.alpha), "head": list(self.head_parameters().values())}
        if self.group_alpha is not None:
            groups["alpha"].append(self.group_alpha)
        return groups
