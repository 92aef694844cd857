"""Means with standard errors, for effects reported beside their noise (benchmarks, the demo)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); NaN error below 2 values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se of no values")
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The mean of a_i - b_i over paired items (the same problems, episodes or prompts for both arms) and
    its standard error: the noise of the difference itself, smaller than two unpaired errors when the arms
    succeed and fail on the same items."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    return mean_se([x - y for x, y in zip(a, b, strict=True)])
