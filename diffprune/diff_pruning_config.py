"""Diff pruning's method hyperparameters (``DiffPruningConfig``), with the paper's defaults
(section 4.3), and the check of a sparsity rate.

Not the run set's YAML config: that is read and checked by ``diffprune.settings``.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

# The usual head names of Hugging Face sequence-classification / QA models and common custom
# heads. Not a default: the head is what the loader newly initialised
# (diffprune.models.head_pattern_of); this regex misses e.g. torchvision's ``fc``, so pass it
# explicitly, for models built by hand, only where it fits.
DEFAULT_HEAD_PATTERN = r"(^|\.)(classifier|qa_outputs|score|head|heads|fc_out)(\.|$)"


@dataclass
class DiffPruningConfig:
    left: float = field(default=-1.5, metadata={"help": "l < 0: lower end of the stretched Hard-Concrete interval"})
    right: float = field(default=1.5, metadata={"help": "r > 1: upper end of the stretched Hard-Concrete interval"})
    alpha_init: float = field(default=5.0, metadata={"help": "initial gate log-odds; 5 keeps z close to 1 at the start"})
    w_init: float = field(default=0.0, metadata={"help": "initial value of the dense diff vector w"})
    l0_lambda: float = field(default=1.25e-7, metadata={"help": "weight of the expected-L0 penalty"})
    structured: bool = field(default=False, metadata={"help": "add one gate per parameter tensor (the paper's groups)"})
    head_pattern: str | None = field(default=None, metadata={"help": "regex on parameter names: the task head, "
                                     "trained densely; None = the parameters the loader newly initialised "
                                     "(diffprune.models.mark_new_parameters)"})
    mask_seed: int = field(default=0, metadata={"help": "seed of the gate noise: training steps draw from "
                                                "(mask_seed + 1, step), the fixed evaluation / export sample from "
                                                "mask_seed; the runner derives it from the run seed"})

    def __post_init__(self) -> None:
        if not self.left < 0:
            raise ValueError(f"left (l) must be < 0, got {self.left}")
        if not self.right > 1:
            raise ValueError(f"right (r) must be > 1, got {self.right}")
        if not (self.l0_lambda >= 0 and math.isfinite(self.l0_lambda)):
            raise ValueError(f"l0_lambda must be a finite number >= 0, got {self.l0_lambda}")
        if self.head_pattern is not None:
            re.compile(self.head_pattern)

    @property
    def log_ratio(self) -> float:
        """log(-l/r): the shift in the closed-form P(z > 0) = sigmoid(alpha - log(-l/r))."""
        return math.log(-self.left / self.right)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DiffPruningConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown diff pruning option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


def check_rate(rate: float) -> float:
    """A sparsity rate in percent of the diffed parameters, in (0, 100]."""
    rate = float(rate)
    if not (0 < rate <= 100):
        raise ValueError(f"sparsity rate must be a percentage in (0, 100], got {rate}")
    return rate
