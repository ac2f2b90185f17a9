"""Every random stream of a run, derived from the run's one seed.

A run's randomness comes from a few independent streams: the initialisation of new weights
(task head, adapters, LoRA) together with dropout, the order of the training data, and diff
pruning's gate noise (the per-step training sample and the fixed evaluation/export sample).
Each stream gets its own seed, derived from the run seed through ``numpy.random.SeedSequence``
so that different run seeds give unrelated streams (seed 1's noise is not seed 0's shifted
by one step) and adding a stream never changes the others.

Inside a stream, a run makes many generators (one per epoch, one per gate-noise chunk of a
step); each is seeded with ``generator_seed(stream seed, counter)``, so that a resumed run can
rebuild any of them from (seed, counter) alone.

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


# generator_seed's layout: seed * stride + counter. These values are what the generators have
# always been seeded with; changing one changes every run's data order or gate noise.
GENERATOR_STRIDE = 1_000_003  # a prime: neighbouring seeds' counters start far apart
# The batch order of a group_by_length epoch counts from here, apart from the example order.
BATCH_ORDER_OFFSET = 7_919
# Structured diff pruning's group gates: a stride of their own, so that their noise is not
# the first chunk of some step's per-entry noise.
GROUP_NOISE_STRIDE = 7_919
# Seeds are reduced modulo this into the non-negative int64 range, which
# torch.Generator.manual_seed accepts: the fixed gate sample's step -1 makes the counter
# of seed 0 negative, and a pinned mask_seed may be any integer.
_SEED_MODULUS = 2**63 - 1


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


def generator_seed(seed: int, counter: int, stride: int = GENERATOR_STRIDE) -> int:
    """The seed of the ``counter``-th generator of the stream seeded ``seed``:
    ``(seed * stride + counter) mod (2**63 - 1)``, the same value for the same arguments in
    every process (a resumed run rebuilds the generator from them)."""
    return (int(seed) * stride + int(counter)) % _SEED_MODULUS


def derive_seeds(run_seed: int) -> RunSeeds:
    return RunSeeds(run=run_seed, **{stream: stream_seed(run_seed, stream) for stream in STREAMS})


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch: every device too)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
