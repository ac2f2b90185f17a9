"""Run seeds -> random streams (diffprune/seeding.py), and diff pruning taking its stream."""
import numpy as np
import pytest
import torch

from diffprune.adaptive import AdaptiveDiffPruning
from diffprune.config import DEFAULT_HEAD_PATTERN
from diffprune.seeding import STREAMS, derive_seeds, stream_seed
from diffprune.tasks import get_task
from diffprune.tiny_models import build_tiny_random_model


def test_each_stream_is_its_own_seed_sequence_child():
    # Worked out with NumPy directly: stream i of run seed S is SeedSequence(S, spawn_key=(i,)).
    for run_seed in (0, 1, 7):
        for index, stream in enumerate(STREAMS):
            expected = int(np.random.SeedSequence(run_seed, spawn_key=(index,)).generate_state(1, np.uint32)[0]) >> 1
            assert stream_seed(run_seed, stream) == expected


def test_streams_differ_across_streams_and_run_seeds_and_repeat():
    seeds = [derive_seeds(s) for s in range(4)]
    values = [getattr(s, stream) for s in seeds for stream in STREAMS]
    assert len(set(values)) == len(values)
    assert derive_seeds(3) == seeds[3]
    # Neighbouring run seeds must not give shifted copies of one stream (seed+1 was the old scheme).
    assert seeds[1].gate_noise != seeds[0].gate_noise + 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_a_run_seed_is_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="run seed"):
        derive_seeds(bad)


def _gate_sample_at_step(run_seed: int, step: int, **options) -> torch.Tensor:
    method = AdaptiveDiffPruning(**options)
    in_effect = method.use_run_seeds(derive_seeds(run_seed))
    model = method.prepare(build_tiny_random_model(get_task("rte")), DEFAULT_HEAD_PATTERN)
    assert model.config.mask_seed == in_effect.gate_noise
    method.begin_step(model, step)
    return model.sample.clone()


def test_two_run_seeds_draw_different_gate_noise_at_the_same_step():
    seed0, seed0_again, seed1 = (_gate_sample_at_step(s, step=5) for s in (0, 0, 1))
    assert torch.equal(seed0, seed0_again)
    assert not torch.equal(seed0, seed1)
    # Not a near-copy either: the two samples are uncorrelated noise.
    correlation = np.corrcoef(seed0.float().numpy(), seed1.float().numpy())[0, 1]
    assert abs(correlation) < 0.05


def test_an_explicit_mask_seed_pins_the_noise_whatever_the_run_seed():
    method = AdaptiveDiffPruning(mask_seed=11)
    assert method.use_run_seeds(derive_seeds(0)).gate_noise == 11
    assert torch.equal(_gate_sample_at_step(0, 2, mask_seed=11), _gate_sample_at_step(1, 2, mask_seed=11))
