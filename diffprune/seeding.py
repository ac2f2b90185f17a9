"""Every random stream of a run, derived from the run's one seed.

A run's randomness comes from a few independent streams: the initialisation of new weights
(task head, adapters, LoRA) together with dropout, the order of the training data, and diff
pruning's gate noise (the per-step training sample and the fixed evaluation/export sample).
Each stream gets its own seed, derived from the run seed through ``numpy.random.SeedSequence``
so that different run seeds give unrelated streams (seed 1's noise is not seed 0's shifted
by one step) and adding a stream never changes the others.

The data *subsample* (``max_train_examples`` / ``max_eval_examples``) is not a stream of the
run: it is part of the task as the run set defines it, so every seed trains and is scored on
the same examples and the spread across seeds measures the method, not the sample.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

# Stream names in a fixed order: a stream's index is its SeedSequence spawn key, so it must
# never be reordered (append new streams at the end).
STREAMS = ("model_init", "data_order", "gate_noise")
# The seed of the train / dev subsamples, the same for every run seed (see above).
DATA_SUBSAMPLE_SEED = 0


@dataclass(frozen=True)
class RunSeeds:
    """The seeds one run actually uses (recorded in its metrics.json)."""

    run: int
    model_init: int   # torch / numpy / random global RNGs: new weights and dropout
    data_order: int   # epoch order and the order of length-grouped batches
    # diff pruning's mask_seed: training noise and the fixed export sample; None in the seeds
    # a method without gate noise reports (Method.use_run_seeds)
    gate_noise: int | None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def stream_seed(run_seed: int, stream: str) -> int:
    """A 31-bit seed for ``stream`` of the run seeded ``run_seed``."""
    if isinstance(run_seed, bool) or not isinstance(run_seed, int) or run_seed < 0:
        raise ValueError(f"a run seed is an integer >= 0, got {run_seed!r}")
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams: {', '.join(STREAMS)}")
    sequence = np.random.SeedSequence(entropy=run_seed, spawn_key=(STREAMS.index(stream),))
    return int(sequence.generate_state(1, dtype=np.uint32)[0] >> 1)


def derive_seeds(run_seed: int) -> RunSeeds:
    return RunSeeds(run=run_seed, **{stream: stream_seed(run_seed, stream) for stream in STREAMS})


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch: every device too)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
