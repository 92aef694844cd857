"""Standard errors of means and of paired differences, against hand-computed values."""

import math

import pytest

from feedlearn.stats import mean_se, paired_difference


def test_mean_se_of_a_few_values():
    mean, se = mean_se([1.0, 2.0, 3.0, 6.0])  # mean 3, squared deviations 4 + 1 + 0 + 9 = 14
    assert mean == 3.0
    assert se == pytest.approx(math.sqrt(14 / 3 / 4))
    assert math.isnan(mean_se([5.0])[1])
    with pytest.raises(ValueError, match="no values"):
        mean_se([])


def test_paired_difference_sees_only_the_noise_of_the_difference():
    a = [1, 1, 0, 1, 0, 1]
    b = [1, 0, 0, 1, 0, 0]  # b fails wherever a does: differences 0 1 0 0 0 1
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(2 / 6)
    assert se == pytest.approx(math.sqrt((4 * (1 / 3) ** 2 + 2 * (2 / 3) ** 2) / 5 / 6))
    unpaired = math.hypot(mean_se(a)[1], mean_se(b)[1])
    assert se < unpaired
    with pytest.raises(ValueError, match="3 values against 2"):
        paired_difference([1, 2, 3], [1, 2])
