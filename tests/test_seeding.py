"""Run seeds -> random streams (diffprune/seeding.py), and diff pruning taking its stream."""
import numpy as np
import pytest
import torch

from diffprune.adaptive import AdaptiveDiffPruning
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN
from diffprune.seeding import (BATCH_ORDER_OFFSET, GROUP_NOISE_STRIDE, STREAMS, derive_seeds, generator_seed,
                               stream_seed)
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


# The four generator layouts as they were written out before generator_seed existed, with
# the constants as literals: (stream seed, step or epoch, chunk) -> the seed of one torch
# generator, old and new. Gate noise counts steps from -1 (the fixed evaluation / export
# sample), the data order epochs from 0.
OLD_LAYOUTS = {
    "gate noise chunk (gates.py)": (-1, lambda seed, step, chunk: (seed * 1_000_003 + step * 8 + chunk) % (2**63 - 1),
                                    lambda seed, step, chunk: generator_seed(seed, step * 8 + chunk)),
    "group gate noise (diff.py)": (-1, lambda seed, step, _: seed * 7919 + step + 1,
                                   lambda seed, step, _: generator_seed(seed, step + 1, stride=GROUP_NOISE_STRIDE)),
    "epoch order (runner.py)": (0, lambda seed, epoch, _: seed * 1_000_003 + epoch,
                                lambda seed, epoch, _: generator_seed(seed, epoch)),
    "batch order (runner.py)": (0, lambda seed, epoch, _: seed * 1_000_003 + epoch + 7_919,
                                lambda seed, epoch, _: generator_seed(seed, epoch + BATCH_ORDER_OFFSET)),
}


@pytest.mark.parametrize("layout", sorted(OLD_LAYOUTS))
def test_generator_seed_gives_every_generator_the_seed_it_always_had(layout):
    first, old, new = OLD_LAYOUTS[layout]
    # stream seeds a run derives are 31-bit; a gate noise seed is also mask_seed + 1
    for seed in (0, 1, 7, 12_345, 2**31 - 1, 2**31):
        for counter in (first, first + 1, 5, 10_000, 3_000_000):
            for chunk in (0, 7):
                assert new(seed, counter, chunk) == old(seed, counter, chunk), (seed, counter, chunk)


def test_generator_seeds_draw_the_streams_they_always_drew():
    # Drawn with the old literal seeds: an epoch's example order (seed 3, epoch 1), its
    # group_by_length batch order, and structured diff pruning's group noise (seed 4, step 6).
    def generator(seed):
        return torch.Generator().manual_seed(seed)

    assert torch.randperm(10, generator=generator(generator_seed(3, 1))).tolist() == [1, 9, 5, 6, 4, 3, 8, 0, 2, 7]
    assert torch.randperm(10, generator=generator(generator_seed(3, 1 + BATCH_ORDER_OFFSET))).tolist() == [
        5, 9, 2, 0, 7, 6, 3, 1, 8, 4]
    assert torch.rand(4, generator=generator(generator_seed(4, 6 + 1, stride=GROUP_NOISE_STRIDE))).tolist() == [
        0.18980252742767334, 0.26047301292419434, 0.8369465470314026, 0.43565601110458374]


def test_generator_seed_is_a_valid_torch_seed_for_any_integer():
    for seed, counter in ((0, -8), (-5, 0), (2**70, 3)):
        value = generator_seed(seed, counter)
        assert 0 <= value < 2**63 - 1
        torch.Generator().manual_seed(value)


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
