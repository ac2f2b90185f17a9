"""Positions of a sparse diff near their information limit: Elias-Fano coding.

A diff keeps k of the d diffed entries; which k is one of C(d, k) subsets, so no encoding
can spend less than log2 C(d, k) bits on the positions (``position_bits_limit``). Elias-Fano
codes the sorted global positions with k * L + k + (d >> L) + 1 bits, L = floor(log2(d / k)):
at most 2 + log2(d / k) bits per entry, a few percent above the limit at the rates diff
pruning uses. Both directions are a handful of vectorised numpy passes (no per-entry Python
loop), and the code is canonical: one position set has exactly one encoding, so re-encoding a
decoded diff gives the stored bytes back (the payload checksum relies on it).
"""
from __future__ import annotations

import math

import numpy as np

ENCODING = "elias-fano"


class EncodingError(ValueError):
    """Bytes that are not the canonical Elias-Fano code of a strictly increasing position set."""


def position_bits_limit(universe: int, count: int) -> float:
    """log2 C(universe, count): the fewest bits any code can spend on ``count`` positions."""
    if not 0 <= count <= universe:
        raise ValueError(f"cannot choose {count} positions among {universe}")
    return (math.lgamma(universe + 1) - math.lgamma(count + 1) - math.lgamma(universe - count + 1)) / math.log(2)


def low_bit_count(universe: int, count: int) -> int:
    """L = floor(log2(universe / count)), the bits stored verbatim per position (0 if count = 0)."""
    if count <= 0 or universe <= count:
        return 0
    return (universe // count).bit_length() - 1


def high_bit_count(universe: int, count: int) -> int:
    """Length of the unary-coded upper-bits vector: count ones and (universe >> L) + 1 zeros at most."""
    if count == 0:
        return 0
    return count + (universe >> low_bit_count(universe, count)) + 1


def encoded_sizes(universe: int, count: int) -> tuple[int, int]:
    """(bytes of the upper-bits vector, bytes of the lower bits) of an Elias-Fano code."""
    return (high_bit_count(universe, count) + 7) // 8, (count * low_bit_count(universe, count) + 7) // 8


def encode(positions: np.ndarray, universe: int) -> tuple[np.ndarray, np.ndarray]:
    """(upper-bits bytes, lower-bits bytes) of strictly increasing ``positions`` in [0, universe)."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    count = positions.size
    if count and (positions[0] < 0 or positions[-1] >= universe):
        raise EncodingError(f"positions must lie in [0, {universe})")
    if count > 1 and not (np.diff(positions) > 0).all():
        raise EncodingError("positions must be strictly increasing (sorted, no repeats)")
    low_bits = low_bit_count(universe, count)
    upper = np.zeros(high_bit_count(universe, count), dtype=np.uint8)
    upper[(positions >> low_bits) + np.arange(count, dtype=np.int64)] = 1
    shifts = np.arange(low_bits - 1, -1, -1, dtype=np.int64)
    lower = ((positions[:, None] >> shifts) & 1).astype(np.uint8)  # most significant bit first
    return np.packbits(upper), np.packbits(lower.reshape(-1))


def decode(upper: np.ndarray, lower: np.ndarray, universe: int, count: int) -> np.ndarray:
    """The int64 positions that ``encode`` turned into these bytes; EncodingError for anything
    that is not a canonical code of ``count`` strictly increasing positions in [0, universe)."""
    upper = np.asarray(upper, dtype=np.uint8).reshape(-1)
    lower = np.asarray(lower, dtype=np.uint8).reshape(-1)
    expected_upper, expected_lower = encoded_sizes(universe, count)
    if upper.size != expected_upper or lower.size != expected_lower:
        raise EncodingError(f"{count} positions among {universe} take {expected_upper} + {expected_lower} "
                            f"bytes, found {upper.size} + {lower.size}")
    low_bits = low_bit_count(universe, count)
    ones = np.flatnonzero(np.unpackbits(upper))  # padding bits included: they must be zero
    if ones.size != count:
        raise EncodingError(f"the upper bits hold {ones.size} positions, the header says {count}")
    high = ones - np.arange(count, dtype=np.int64)
    lower_bits = np.unpackbits(lower)
    if lower_bits[count * low_bits:].any():
        raise EncodingError("nonzero padding after the lower bits")
    weights = (1 << np.arange(low_bits - 1, -1, -1, dtype=np.int64))
    low = lower_bits[:count * low_bits].reshape(count, low_bits).astype(np.int64) @ weights
    positions = (high << low_bits) | low
    if count and positions[-1] >= universe:
        raise EncodingError(f"a position lies beyond the {universe} diffed entries")
    if count > 1 and not (np.diff(positions) > 0).all():
        raise EncodingError("positions repeat an entry")
    return positions
