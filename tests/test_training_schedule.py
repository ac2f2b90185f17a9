"""diffprune/training_schedule.py: a run's batches and learning-rate factors are functions of
(seed, epoch, step) only, so that a resumed run rebuilds them."""
from __future__ import annotations

from diffprune.training_schedule import epoch_batches, epoch_order, linear_schedule, step_counts


def test_linear_schedule_and_epoch_order():
    factor = linear_schedule(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert epoch_order(10, seed=3, epoch=1) == epoch_order(10, seed=3, epoch=1)
    assert epoch_order(10, seed=3, epoch=1) != epoch_order(10, seed=3, epoch=2)
    assert sorted(epoch_order(10, seed=3, epoch=1)) == list(range(10))


def test_length_grouped_batches_cover_the_epoch_and_pad_less():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    plain = epoch_batches(1000, 8, seed=1, epoch=0)
    grouped = epoch_batches(1000, 8, seed=1, epoch=0, lengths=lengths)
    assert plain == [epoch_order(1000, 1, 0)[i:i + 8] for i in range(0, 1000, 8)]
    assert sorted(i for batch in grouped for i in batch) == list(range(1000))
    assert grouped == epoch_batches(1000, 8, seed=1, epoch=0, lengths=lengths)
    assert grouped != epoch_batches(1000, 8, seed=1, epoch=1, lengths=lengths)

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    # every batch padded to its longest member: grouping must waste far fewer tokens
    assert padded_tokens(grouped) < 0.6 * padded_tokens(plain)


def test_step_counts_follow_epochs_accumulation_and_max_steps():
    training = {"batch_size": 3, "gradient_accumulation_steps": 2, "epochs": 3, "max_steps": None,
                "warmup_ratio": 0.1}
    # 16 examples / batch 3 = 6 micro-batches = 3 optimizer steps per epoch
    assert step_counts(16, training) == (9, 1)
    assert step_counts(16, {**training, "max_steps": 5}) == (5, 0)
    assert step_counts(16, {**training, "gradient_accumulation_steps": 4, "warmup_ratio": 0.5}) == (6, 3)
