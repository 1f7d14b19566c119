"""Bootstrap intervals (burnlab/analysis/estimates.py) on samples with known answers.

.venv/bin/python -m pytest tests/analysis/test_estimates.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from burnlab.analysis import estimates


def test_a_constant_has_a_zero_width_interval():
    found = estimates.bootstrap(estimates.per_image_mean(np.full(9, 0.4)), 9)
    assert (found.value, found.low, found.high, found.se) == pytest.approx((0.4, 0.4, 0.4, 0.0))


def test_the_standard_error_of_a_mean_matches_the_textbook():
    values = np.array([0.0, 1.0] * 50)  # a proportion of 0.5 over 100 images
    found = estimates.bootstrap(estimates.per_image_mean(values), 100)
    assert found.value == 0.5 and found.se == pytest.approx(np.sqrt(0.25 / 100), rel=0.1)
    assert found.low < 0.5 < found.high and found.high - found.low == pytest.approx(2 * 1.96 * 0.05, rel=0.15)
    assert estimates.bootstrap(estimates.per_image_mean(values), 100) == found  # fixed resamples


def test_images_a_metric_does_not_apply_to_are_left_out():
    values = np.array([1.0, np.nan, 0.0, np.nan])
    assert estimates.bootstrap(estimates.per_image_mean(values), 4).value == 0.5
    assert estimates.bootstrap(estimates.per_image_mean(np.full(3, np.nan)), 3) is None


def test_pairwise_means_never_pair_a_sample_with_itself():
    distances = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=float)
    statistic = estimates.pairwise_mean(distances)
    assert statistic(np.array([[0, 1, 2]]))[0] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert statistic(np.array([[1, 1, 1]]))[0] == 0.0  # one distinct sample: no pair
    assert statistic(np.array([[0, 0, 2]]))[0] == pytest.approx(2.0)  # only the (0, 2) pairs


def test_clipped_mean_averages_before_clamping():
    statistic = estimates.clipped_mean(np.array([0.3, -0.1]), 100.0)
    assert statistic(np.array([[0, 1]]))[0] == pytest.approx(10.0)
    assert statistic(np.array([[1, 1]]))[0] == 0.0


def test_pooled_hellinger_is_zero_for_the_reference_and_one_for_disjoint_colours():
    histograms = np.array([[1.0, 0.0], [0.0, 1.0]])
    statistic = estimates.pooled_hellinger(histograms, np.array([0.5, 0.5]))
    assert statistic(np.array([[0, 1]]))[0] == pytest.approx(0.0, abs=1e-12)
    assert statistic(np.array([[0, 0]]))[0] == pytest.approx(np.sqrt(1 - np.sqrt(0.5)))
    disjoint = estimates.pooled_hellinger(histograms, np.array([0.0, 1.0]))
    assert disjoint(np.array([[0, 0]]))[0] == pytest.approx(1.0)
