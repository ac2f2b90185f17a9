"""AdamW for the L0 phase that holds one gradient buffer per diffed entry instead of two.

The gradients of w and alpha are both elementwise in g = d loss / d delta (delta = z * w,
the effective diff), the step's gate sample s, w and alpha:

    d loss/d w     = g * z(s) (* z_g)
    d loss/d alpha = g * w (* z_g) * dz/dalpha(s)  +  d penalty/d alpha(alpha)

so backward keeps only g (``DiffPrunedModel.keep_delta_grad``) and ``DeltaGradAdamW`` forms
both gradients chunk by chunk when it needs them: once for their norms (global-norm clipping
needs the norm of every gradient before the first update) and once for the update. The
update is torch's own AdamW function applied to each chunk (its kernels are elementwise, so
chunking changes no bit), on the gradients scaled by the clipping coefficient as
``torch.nn.utils.clip_grad_norm_`` scales materialised ones. State, param groups,
``state_dict`` and the learning-rate schedule are AdamW's: checkpoints of this optimizer and
of a plain ``torch.optim.AdamW`` over the same groups are interchangeable.
"""
from __future__ import annotations

import torch

from diffprune.chunked import adamw_update_
from diffprune.diff import DiffPrunedModel
from diffprune.methods import allocate_adamw_state, fusable


def _norm(tensor: torch.Tensor) -> torch.Tensor:
    # the function clip_grad_norm_ takes each tensor's norm with (on CPU and CUDA)
    return torch._foreach_norm([tensor], 2.0)[0]


class DeltaGradAdamW(torch.optim.AdamW):
    """AdamW over ``model``'s parameter groups (w, alpha, the head, the group gates) that forms
    the gradients of w and alpha from the kept d loss / d delta at its step.

    Use it as any optimizer (``zero_grad``, backward, ``step``). To clip by global norm, call
    its ``clip_grad_norm_`` between backward and ``step`` (``diffprune.training_step`` does):
    ``torch.nn.utils.clip_grad_norm_`` would see only the gradients held in ``.grad``. The
    penalty must leave alpha's gradient to the optimizer (``penalty(alpha_gradient=False)``):
    a ``.grad`` on w or alpha is refused here, and an fp16 loss scaler (it reads every
    gradient) by ``training_step``.
    """

    def __init__(self, groups: list[dict], lr: float, model: DiffPrunedModel) -> None:
        super().__init__(groups, lr=lr, fused=fusable([p for g in groups for p in g["params"]]))
        self.model = model
        allocate_adamw_state(self)  # the d-sized moments before the first step's activations
        model.keep_delta_grad()
        group_of = {id(p): i for i, group in enumerate(self.param_groups) for p in group["params"]}
        # (slot, its w, its alpha, their param groups' indices): the groups are looked up at each
        # step, since the scheduler and load_state_dict write self.param_groups
        self._slots = [(slot, model.w[slot.index], model.alpha[slot.index],
                        group_of[id(model.w[slot.index])], group_of[id(model.alpha[slot.index])])
                       for slot in model.slots]
        self._diff_params = {id(p) for _, w, alpha, _, _ in self._slots for p in (w, alpha)}
        self._clip_coef: torch.Tensor | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.model.clear_delta_grad()
        self._clip_coef = None

    def _refuse_held_grads(self) -> None:
        held = [name for name, p in self.model.named_parameters() if id(p) in self._diff_params and p.grad is not None]
        if held:
            raise RuntimeError(
                f"{held[:3]} hold a .grad, but DeltaGradAdamW forms the gradients of w and alpha itself from "
                "d loss / d delta: take the penalty with penalty(alpha_gradient=False), and no other loss "
                "term on w or alpha")

    # -- clipping --------------------------------------------------------------------------
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, parameters=None) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` over this step's gradients,
        those of w and alpha included; returns the total norm.

        ``parameters``: the tensors the norm is over, in the order their norms are combined
        (default: this optimizer's). As in torch, each tensor's norm is taken and the total is
        the norm of those; a tensor of up to ``diffprune.chunked.CHUNK`` entries gets the norm
        torch gives it bit for bit, a larger one the norm of its chunks' norms (equal up to
        rounding). Gradients held in ``.grad`` are scaled now, those of w and alpha at ``step``.
        """
        self._refuse_held_grads()
        if parameters is None:
            parameters = [p for group in self.param_groups for p in group["params"]]
        diff_norms = self._diff_grad_norms()
        norms = []
        for p in parameters:
            if id(p) in self._diff_params:
                if id(p) in diff_norms:
                    norms.append(diff_norms[id(p)])
            elif p.grad is not None:
                norms.append(_norm(p.grad))
        if not norms:
            return torch.zeros(())
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        held = [p.grad for p in parameters if id(p) not in self._diff_params and p.grad is not None]
        if held:
            torch._foreach_mul_(held, coef)
        self._clip_coef = coef
        return total

    def _diff_grad_norms(self) -> dict[int, torch.Tensor]:
        """id(parameter) -> 2-norm of its gradient, for every w and alpha that has one."""
        norms = {}
        for slot, w, alpha, _, _ in self._slots:
            chunk_norms: tuple[list, list] = ([], [])
            for _, *grads in self.model.diff_grad_chunks(slot):
                for found, g in zip(chunk_norms, grads):
                    if g is not None:
                        found.append(_norm(g))
            for p, found in zip((w, alpha), chunk_norms):
                if found:
                    norms[id(p)] = found[0] if len(found) == 1 else torch.linalg.vector_norm(torch.stack(found), 2.0)
        return norms

    # -- the update ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """AdamW's step: the head and the group gates from their ``.grad``, w and alpha chunk by
        chunk from the gradients formed now (times the clipping coefficient when clipped)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._refuse_held_grads()
        coef, self._clip_coef = self._clip_coef, None
        super().step()  # w and alpha hold no .grad: AdamW skips them
        for slot, w, alpha, w_group, alpha_group in self._slots:
            present = self.model.diff_grads_present(slot)
            if not any(present):
                continue  # as AdamW skips a parameter without gradient (its step count stays)
            params = (w, alpha)
            groups = (self.param_groups[w_group], self.param_groups[alpha_group])
            counts = [self.state[p]["step"] for p in params]
            for part, *grads in self.model.diff_grad_chunks(slot):
                for p, group, grad, count in zip(params, groups, grads, counts):
                    if grad is None:
                        continue
                    if coef is not None:
                        grad.mul_(coef)
                    adamw_update_(self, p, group, part, grad, count)
            for p, count, has_grad in zip(params, counts, present):
                if has_grad:
                    count += 1
        self.model.penalty_gradient_applied()
        return loss
