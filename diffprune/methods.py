"""The one interface every adaptation method implements.

The runner, the CLI and the workflow only ever talk to a ``Method``; nothing downstream
special-cases a method by name. A new baseline is a subclass in ``baselines/`` plus one line
in ``diffprune/registry.py`` (and a config entry to run it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from diffprune import method_options
from diffprune.chunked import adamw_update_, chunks, dense_chunks

if TYPE_CHECKING:
    from diffprune.artifact import Artifact, ArtifactIdentity
    from diffprune.seeding import RunSeeds


def adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where the parameters allow it (CPU and CUDA floats).

    Every method uses this same optimizer so that time/memory comparisons are fair.
    """
    return torch.optim.AdamW(groups, lr=lr, fused=fusable([p for g in groups for p in g["params"]]))


def allocate_adamw_state(optimizer: torch.optim.AdamW) -> None:
    """Make AdamW's per-parameter state now, with the values AdamW gives it at its first step.

    Made lazily, the moments of large parameters would be allocated amid the first step's
    gradients and temporaries, and leave the heap fragmented for the rest of the run.
    """
    for group in optimizer.param_groups:
        on_device = group["fused"] or group["capturable"]  # where AdamW keeps the step count
        for p in group["params"]:
            optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu"),
                                  "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group["amsgrad"]:
                optimizer.state[p]["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def fusable(params: list) -> bool:
    """Whether AdamW's fused kernel takes these parameters (CPU and CUDA floats)."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


# Parameters of at least this many entries are updated inside backward by AdamWInBackward.
IN_BACKWARD_MIN_NUMEL = 1 << 16


class AdamWInBackward(torch.optim.AdamW):
    """AdamW that updates each large parameter inside backward, as soon as its gradient is
    complete, and drops that gradient ("optimizer in backward", as in torchtune): the step
    never holds every gradient at once, which saves one buffer per trainable entry.

    Each parameter of at least ``in_backward_numel`` entries gets a one-parameter AdamW (fused
    where ``adamw`` would fuse) that shares this optimizer's ``state``, stepped from a
    post-accumulate-grad hook with the current hyperparameters of its group here. Smaller
    ones (biases, norms: a negligible share of the gradients) keep their gradients and are
    updated together by ``step()`` in one multi-tensor kernel, which costs less than a kernel
    launch each. The learning-rate schedule, ``state_dict`` and ``load_state_dict``
    (checkpoints) are exactly AdamW's, and so is every update. What it cannot do is anything
    that needs every gradient first (global-norm clipping, a loss scaler's overflow check) or
    several backwards per step (gradient accumulation): ``training_step`` refuses those.

    ``gradient_hooks``: per parameter, a function ``hook(grad, part)`` called with its complete
    gradient just before its update (diff pruning adds the expected-L0 penalty's gradient to
    alpha there): ``grad`` is the flat gradient of the entries ``part`` (a slice) of the flat
    parameter. A dense gradient comes whole (``part`` None); a row-sparse one (an embedding
    lookup's) is made dense and applied one chunk at a time (``diffprune.chunked``), since a
    vocabulary-sized dense gradient would be the largest temporary of the step.
    """

    steps_in_backward = True

    def __init__(self, groups: list[dict], lr: float, gradient_hooks: dict | None = None,
                 in_backward_numel: int | None = None) -> None:
        if in_backward_numel is None:
            in_backward_numel = IN_BACKWARD_MIN_NUMEL
        super().__init__(groups, lr=lr, fused=fusable([p for g in groups for p in g["params"]]))
        gradient_hooks = gradient_hooks or {}
        allocate_adamw_state(self)  # now, not inside the first backward amid its activations
        self._single: list[torch.optim.AdamW] = []
        self._handles = []
        self._after_backward = []  # (parameter, gradient hook) of the parameters step() updates
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.numel() < in_backward_numel:
                    self._after_backward.append((p, gradient_hooks.get(p)))
                    continue
                single = torch.optim.AdamW([{**group, "params": [p]}], lr=group["lr"], fused=group["fused"])
                single.state = self.state
                self._single.append(single)
                self._handles.append(p.register_post_accumulate_grad_hook(
                    self._update_hook(index, single, gradient_hooks.get(p))))

    def _update_hook(self, group_index: int, single: torch.optim.AdamW, before_update):
        def update(p: torch.Tensor) -> None:
            # Looked up at each step: the scheduler and load_state_dict write self.param_groups.
            group = self.param_groups[group_index]
            if p.grad.is_sparse:
                self._update_in_chunks(p, group, before_update)
                return
            if before_update is not None:
                before_update(p.grad.view(-1), None)
            single.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
            single.step()
            p.grad = None
        return update

    @torch.no_grad()
    def _update_in_chunks(self, p: torch.Tensor, group: dict, before_update) -> None:
        """AdamW's update of ``p`` from its row-sparse gradient, one dense chunk at a time."""
        grad, p.grad = p.grad.coalesce(), None
        parts = list(chunks(p.numel()))
        dense_part = dense_chunks(grad, parts)
        count = self.state[p]["step"]
        for i, part in enumerate(parts):
            chunk = dense_part(i)
            if before_update is not None:
                before_update(chunk, part)
            adamw_update_(self, p, group, part, chunk, count)
        count += 1

    @torch.no_grad()
    def step(self, closure=None):
        """Update the small parameters (the large ones were updated inside backward and have
        no gradient left, so AdamW's step skips them)."""
        for p, before_update in self._after_backward:
            if p.grad is not None and p.grad.is_sparse:
                p.grad = p.grad.to_dense()
            if before_update is not None and p.grad is not None:
                before_update(p.grad.view(-1), None)
        return super().step(closure)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for single in self._single:  # the load replaced ``self.state``: share the new one
            single.state = self.state

    def remove_hooks(self) -> None:
        """Detach from the parameters (after training; a later backward then updates nothing)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class Method:
    """How one method adapts a pretrained model to a task.

    ``options`` are the method's own settings from the config's method entry (e.g. the
    adapter bottleneck size); training hyperparameters arrive as a mapping ``training``.
    """

    name: ClassVar[str] = ""
    # After training, fan out to project at each rate + fixed-mask finetuning.
    projected: ClassVar[bool] = False
    # The train phase is another method's run (non-adaptive diff pruning reuses full finetuning).
    reuses: ClassVar[str | None] = None
    # Trains on its own but first reads another method's finished train run of the same task
    # and seed (critical-layer finetuning ranks layers by how far full finetuning moved them);
    # the runner puts that run's directory into the option named ``run_option``.
    needs_run: ClassVar[str | None] = None
    run_option: ClassVar[str | None] = None
    # One line on the method, for its entry in the generated "Method options" docs.
    summary: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Options:
        """The method's own options, the keys of its config entry besides method, tasks, rates,
        training ...: one field per option with its type, default, help text and range
        (``diffprune.method_options.option``). A subclass declares its own ``Options``; the
        defaults, the check of a config entry and the docs are derived from it. None here."""

    @classmethod
    def needs_run_for(cls, options: dict) -> bool:
        """Whether a method entry with these options needs the ``needs_run`` run."""
        return cls.needs_run is not None and options.get(cls.run_option) is None

    def __init__(self, **options: Any) -> None:
        # Checked against ``Options`` here too, not only at planning: a method built in Python
        # gets the same unknown-key, type and range errors as a config entry.
        name = self.name or type(self).__name__
        method_options.check_options(name, self.Options, options, name)
        self.options = {**self.option_defaults(), **options}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The method's own options and their defaults (declared by ``Options``)."""
        return method_options.defaults(cls.Options)

    def use_run_seeds(self, seeds: "RunSeeds") -> "RunSeeds":
        """Take the run's random streams before ``prepare``; return the seeds in effect.

        The global RNGs (new weights, dropout) and the data order are seeded by the runner;
        a method with a stream of its own (diff pruning's gate noise) takes it here, unless
        its options pin it explicitly, and reports the value it really uses. A method without
        gate noise reports ``gate_noise=None``, so metrics.json does not claim a stream that
        never drew a number.
        """
        return replace(seeds, gate_noise=None)

    def check_model(self, model: nn.Module, head_pattern: str) -> None:
        """Raise ``ValueError`` (saying why and what to do instead) if this method cannot
        adapt ``model``. Planning calls it on the weightless skeleton of the configured model
        (meta device, head marked), so that a method that cannot apply is refused before a job
        starts, not with a traceback from inside one; only names, shapes, module types and the
        config may be read. Default: every model is fine."""

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        """Freeze / attach what the method needs; return the module to train."""
        raise NotImplementedError

    def report(self) -> dict | None:
        """What this run actually trained, when the options alone do not say (e.g. which block
        is "the last layer" of this model, which norms adapters train); metrics.json records it
        under ``method_report``. Called after ``prepare``."""
        return None

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        """Optimizer groups; default: every trainable parameter at the base learning rate."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        wd = float(training.get("weight_decay", 0.0))
        return [g for g in ({"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]

    def make_optimizer(self, model: nn.Module, training: dict) -> torch.optim.Optimizer:
        return adamw(self.parameter_groups(model, training), lr=float(training["learning_rate"]))

    def begin_step(self, model: nn.Module, step: int) -> None:
        """Called once before each optimizer step's forward passes."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss added to the task loss (None: nothing)."""
        return None

    def new_parameter_count(self, model: nn.Module) -> int:
        """Parameters stored per task (the paper's "new params / task" column)."""
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    # -- what one task stores: one payload + artifact.json (diffprune.artifact) --------------
    def save(self, model: nn.Module, out_dir, identity: "ArtifactIdentity", dense_diff: str | None = None) -> dict:
        """Write the task's artifact into ``out_dir``: ONE safetensors payload and
        ``artifact.json``; return the config written. Default: ``stored_state`` as a task_state
        payload. ``dense_diff``: the file name of the dense diff the run already wrote for this
        model (its hand-over to prune runs), for a method whose payload that file is."""
        from diffprune.artifact import save_state

        return save_state(self, model, out_dir, identity)

    @classmethod
    def from_artifact(cls, config: dict) -> "Method":
        """The method that ``load``s an artifact this class saved (``config``: its artifact.json)."""
        return cls(**config["load_options"])

    def artifact_options(self) -> dict[str, Any]:
        """Options that make ``prepare`` build this run's structure again on a fresh base;
        recorded as the artifact's ``load_options``. Default: the options as given."""
        return dict(self.options)

    def load(self, model: nn.Module, artifact: "Artifact") -> nn.Module:
        """The task model ``save`` stored, rebuilt on ``model`` (a fresh base model with a head
        of the task's shape), in eval mode. Default: check the base, ``prepare`` it as the run
        did, then ``load_stored_state``."""
        from diffprune.artifact import load_state

        return load_state(self, model, artifact)

    def stored_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The default payload's tensors: ``param.<name>`` for each parameter that trains
        (``requires_grad`` after ``prepare``), ``buffer.<name>`` for each task buffer."""
        from diffprune.artifact import trainable_state

        return trainable_state(model)

    def load_stored_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Put ``stored_state``'s tensors into a freshly prepared model: strictly (names, shapes
        and dtypes must match, ``diffprune.artifact.ArtifactError`` otherwise), all or nothing."""
        from diffprune.artifact import load_trainable_state_

        load_trainable_state_(model, tensors, source)

    def stats(self, model: nn.Module) -> dict | None:
        """stats.json content for this run (per-layer nonzeros, zero groups, distances) or None."""
        return None

    def dense_diff(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """theta_task - theta_0 for every diffed tensor, or None if the method has no diff."""
        return None

