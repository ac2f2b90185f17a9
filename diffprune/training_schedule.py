"""What each optimizer step of a run sees: its batches and its learning-rate factor.

Both are functions of (seed, epoch) and (step) only, never of a generator's running state:
a run resumed from a checkpoint rebuilds the same epoch order and schedule from the step and
epoch it stored.
"""
from __future__ import annotations

import math

from diffprune.seeding import BATCH_ORDER_OFFSET, generator_seed

# group_by_length: examples are sorted by length within windows of this many batches.
LENGTH_GROUP_BATCHES = 50


def epoch_order(num_examples: int, seed: int, epoch: int):
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run
    can rebuild it without having stored a generator's state."""
    import torch

    generator = torch.Generator().manual_seed(generator_seed(seed, epoch))
    return torch.randperm(num_examples, generator=generator).tolist()


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """The batches of one epoch (lists of example indices), a function of its arguments only.

    With ``lengths`` (group_by_length), the epoch's random order is cut into windows of
    ``LENGTH_GROUP_BATCHES`` batches, each window sorted by length and cut into batches,
    and the batches shuffled: a batch holds examples of similar length, so dynamic padding
    pads little (the same idea as Hugging Face's ``group_by_length``), while which examples
    meet in a batch stays random.
    """
    import torch

    order = epoch_order(num_examples, seed, epoch)
    if lengths is None:
        return [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    window = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, num_examples, window):
        by_length = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches += [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    generator = torch.Generator().manual_seed(generator_seed(seed, epoch + BATCH_ORDER_OFFSET))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def step_counts(num_examples: int, training: dict) -> tuple[int, int]:
    """(optimizer steps, warmup steps) of a run over ``num_examples`` training examples: every
    epoch takes ceil(batches / gradient_accumulation_steps) steps, ``max_steps`` caps the total,
    and ``warmup_ratio`` of the total warm up."""
    micro_batches = math.ceil(num_examples / training["batch_size"])
    steps_per_epoch = math.ceil(micro_batches / training["gradient_accumulation_steps"])
    total_steps = training["epochs"] * steps_per_epoch
    if training["max_steps"] is not None:
        total_steps = min(total_steps, training["max_steps"])
    return total_steps, int(round(training["warmup_ratio"] * total_steps))


def linear_schedule(total_steps: int, warmup_steps: int):
    """Linear warmup to the base learning rate, then linear decay to 0 (BERT's schedule)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
