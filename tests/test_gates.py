"""Hard-Concrete maths against values worked out by hand."""
import math

import torch

from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.gates import (ExpectedL0, draw_gate_sample_, expected_l0, expected_l0_structured, fill_uniform_, gate_slope,
                             hard_concrete, logistic_s_, stretch)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_expected_l0_unstructured_by_hand():
    # l = -1.5, r = 1.5 -> log(-l/r) = 0, so E[L0] = sum sigmoid(alpha)
    alpha = torch.tensor([0.0, 5.0, -2.0])
    assert math.isclose(expected_l0(alpha, -1.5, 1.5).item(), 0.5 + sig(5) + sig(-2), rel_tol=1e-6)
    # l = -0.1, r = 1.1 -> shift log(0.1/1.1)
    shift = math.log(0.1 / 1.1)
    assert math.isclose(expected_l0(torch.tensor([1.0]), -0.1, 1.1).item(), sig(1 - shift), rel_tol=1e-6)


def test_expected_l0_structured_is_the_product_form():
    a1, a2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0])
    groups = torch.tensor([0.0, -1.0])
    by_hand = sig(0) * (sig(0) + sig(1)) + sig(-1) * sig(2)
    assert math.isclose(expected_l0_structured([a1, a2], groups, -1.5, 1.5).item(), by_hand, rel_tol=1e-6)


def test_memory_light_penalty_matches_reference_and_its_gradient():
    torch.manual_seed(0)
    alphas = [torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)]
    groups = torch.randn(2, requires_grad=True)
    c = DiffPruningConfig().log_ratio
    fast = ExpectedL0.apply(c, groups, *alphas)
    fast.backward()
    fast_grads = [a.grad.clone() for a in alphas] + [groups.grad.clone()]
    for t in alphas + [groups]:
        t.grad = None
    ref = expected_l0_structured(alphas, groups, -1.5, 1.5)
    ref.backward()
    assert torch.allclose(fast, ref)
    for got, want in zip(fast_grads, [a.grad for a in alphas] + [groups.grad]):
        assert torch.allclose(got, want, atol=1e-7)


def test_gate_stretch_clamp_and_slope():
    # s = 0.5 -> z_bar = 0 (clamped boundary), s = 0.75 -> 0.75 * 3 - 1.5 = 0.75, s = 0.9 -> 1.2 -> 1
    s = torch.tensor([0.5, 0.75, 0.9])
    assert torch.allclose(stretch(s, -1.5, 1.5), torch.tensor([0.0, 0.75, 1.0]))
    assert torch.equal(s, torch.tensor([0.5, 0.75, 0.9]))  # not in place: s is still the sample
    slope = gate_slope(s, -1.5, 1.5)
    assert slope[0] == 0 and slope[2] == 0
    assert math.isclose(slope[1].item(), 3 * 0.75 * 0.25, rel_tol=1e-6)


def test_in_place_sampling_matches_the_formula():
    u = torch.tensor([0.2, 0.5, 0.9])
    alpha = torch.tensor([0.0, 1.0, -1.0])
    s = logistic_s_(u.clone(), alpha)
    z = stretch(s, -1.5, 1.5)
    assert torch.allclose(z, hard_concrete(alpha, u, -1.5, 1.5))


def test_noise_depends_only_on_seed_and_step_not_on_threads():
    a = fill_uniform_(torch.empty(300_000), seed=3, step=7)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = fill_uniform_(torch.empty(300_000), seed=3, step=7)
    finally:
        torch.set_num_threads(before)
    c = fill_uniform_(torch.empty(300_000), seed=3, step=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert 0 < a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.01


def test_noise_of_a_seed_and_step_is_what_it_has_always_been():
    # Drawn before the chunk seeds moved to diffprune.seeding.generator_seed: the gate noise
    # of (seed, step), and so every diff pruning run, must not change with the helper.
    assert fill_uniform_(torch.empty(16), seed=3, step=5).tolist() == [
        0.868744432926178, 0.5878620743751526, 0.46124064922332764, 0.5125680565834045,
        0.2316373586654663, 0.0958978533744812, 0.11905336380004883, 0.9472494125366211,
        0.010827362537384033, 0.2503807544708252, 0.527427613735199, 0.6359773874282837,
        0.7989388108253479, 0.66411954164505, 0.6465516090393066, 0.2707974910736084]
    # step -1 (the fixed evaluation / export sample) of seed 0: negative counters, wrapped
    assert fill_uniform_(torch.empty(16), seed=0, step=-1).tolist() == [
        0.7980604767799377, 0.6225141286849976, 0.8826274871826172, 0.3958641290664673,
        0.2533376216888428, 0.6773603558540344, 0.10018062591552734, 0.726364254951477,
        0.9308151006698608, 0.6607242226600647, 0.417270302772522, 0.025916099548339844,
        0.6248647570610046, 0.5075611472129822, 0.2907348871231079, 0.07334184646606445]


def test_gate_sample_is_the_logistic_of_the_seeded_noise_in_any_precision():
    alphas = [torch.randn(70_000), torch.randn(3), torch.randn(130_000)]
    offsets = [0, 70_000, 70_003]
    u = fill_uniform_(torch.empty(200_003), seed=5, step=2)
    want = torch.cat([logistic_s_(u[o:o + a.numel()].clone(), a) for o, a in zip(offsets, alphas)])
    full = draw_gate_sample_(torch.empty(200_003), list(zip(offsets, alphas)), seed=5, step=2)
    half = draw_gate_sample_(torch.empty(200_003, dtype=torch.float16), list(zip(offsets, alphas)), seed=5, step=2)
    assert torch.allclose(full, want, rtol=0, atol=1e-6)  # same noise (SIMD tails may differ by an ulp)
    assert torch.allclose(half.float(), want, atol=2**-11)
