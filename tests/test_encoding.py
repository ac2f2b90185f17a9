"""Elias-Fano positions: exact round trips, size near log2 C(d, k), corrupt codes refused."""
import math

import numpy as np
import pytest

from diffprune.encoding import (EncodingError, decode, encode, encoded_sizes, low_bit_count,
                                position_bits_limit)


@pytest.mark.parametrize("universe,count", [(10, 0), (10, 1), (10, 10), (1000, 999), (2_000_000, 2_000),
                                            (2_000_000, 10_000), (2_000_000, 20_000), (7, 3)])
def test_round_trip_is_exact(universe, count):
    rng = np.random.default_rng(count)
    positions = np.sort(rng.choice(universe, count, replace=False)).astype(np.int64)
    upper, lower = encode(positions, universe)
    assert (upper.size, lower.size) == encoded_sizes(universe, count)
    assert np.array_equal(decode(upper, lower, universe, count), positions)


@pytest.mark.parametrize("rate", [0.001, 0.005, 0.01])
def test_size_is_near_the_information_limit_at_diff_pruning_rates(rate):
    universe = 5_000_000
    count = int(universe * rate)
    positions = np.sort(np.random.default_rng(1).choice(universe, count, replace=False))
    upper, lower = encode(positions, universe)
    bits = 8 * (upper.size + lower.size)
    assert bits <= count * (2 + math.log2(universe / count)) + 16  # Elias-Fano's bound
    assert bits <= 1.07 * position_bits_limit(universe, count)     # measured: 1.05-1.06x


def test_the_limit_is_log2_of_the_binomial():
    assert position_bits_limit(10, 3) == pytest.approx(math.log2(120))
    assert position_bits_limit(10, 0) == 0
    assert low_bit_count(16, 2) == 3 and low_bit_count(5, 5) == 0


def test_encode_refuses_unsorted_repeated_or_out_of_range_positions():
    with pytest.raises(EncodingError, match="strictly increasing"):
        encode(np.array([3, 1]), 10)
    with pytest.raises(EncodingError, match="strictly increasing"):
        encode(np.array([1, 1]), 10)
    with pytest.raises(EncodingError, match=r"lie in \[0, 10\)"):
        encode(np.array([1, 10]), 10)


def test_corrupt_codes_are_refused():
    upper, lower = encode(np.array([4, 5]), 16)  # L = 3: lower bits 100 101
    assert lower.tolist() == [0b10010100]
    with pytest.raises(EncodingError, match="repeat"):
        decode(upper, np.array([0b10010000], dtype=np.uint8), 16, 2)  # 4, 4
    with pytest.raises(EncodingError, match="padding"):
        decode(upper, np.array([0b10010101], dtype=np.uint8), 16, 2)
    with pytest.raises(EncodingError, match="hold 3 positions, the header says 2"):
        decode(upper | np.uint8(0b00000010), lower, 16, 2)
    with pytest.raises(EncodingError, match="take 1 \\+ 1 bytes"):
        decode(np.concatenate([upper, upper]), lower, 16, 2)
    with pytest.raises(EncodingError, match="beyond the 16 diffed entries"):
        decode(np.array([0b10010000], dtype=np.uint8), lower, 16, 2)  # upper parts 0 and 2: 4 and 21
