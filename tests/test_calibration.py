"""Thresholds for a stated false-alarm rate (anomstream.calibration): pure, no server."""

from __future__ import annotations

import numpy as np
import pytest

from anomstream.calibration import MIN_TAIL, calibrate
from anomstream.errors import ModelError


def exceedance(threshold: float, fresh: np.ndarray) -> float:
    return float((fresh > threshold).mean())


@pytest.mark.parametrize("draw", [np.random.Generator.standard_normal, np.random.Generator.standard_exponential])
def test_empirical_quantile_gives_the_target_rate_on_fresh_samples(draw):
    rng = np.random.default_rng(3)
    held_back, fresh = draw(rng, 20_000), draw(rng, 1_000_000)
    calibration = calibrate(held_back, 0.01)
    assert calibration.method == "empirical"
    assert 0.007 < exceedance(calibration.threshold, fresh) < 0.013
    assert 0.0 < calibration.held_back_rate <= 0.01


@pytest.mark.parametrize("samples", [300, 2_000, 10_000])
def test_peaks_over_threshold_extrapolates_an_exponential_tail(samples):
    # Too few held-back scores beyond the target for an empirical quantile: the tail is fitted instead.
    rng = np.random.default_rng(samples)
    calibration = calibrate(rng.standard_exponential(samples), 0.001)
    assert calibration.method.startswith("pot-") and calibration.peaks >= 10
    true_quantile = -np.log(0.001)  # 6.91
    assert abs(calibration.threshold - true_quantile) / true_quantile < 0.3
    assert calibration.threshold > np.quantile(rng.standard_exponential(samples), 0.9)


def test_pot_rate_on_normal_scores_is_within_a_factor_of_two():
    rng = np.random.default_rng(5)
    fresh = rng.standard_normal(2_000_000)
    rates = [exceedance(calibrate(rng.standard_normal(5_000), 0.001).threshold, fresh) for _ in range(5)]
    assert all(0.0005 <= rate <= 0.002 for rate in rates), rates


def test_gpd_shape_is_estimated_with_many_peaks_and_bounded():
    rng = np.random.default_rng(8)
    heavy = rng.pareto(1.0, 5_000)  # shape 1: heavier than the bound allows
    calibration = calibrate(heavy, 0.0005)
    assert calibration.method == "pot-gpd" and calibration.shape == pytest.approx(0.5)
    light = calibrate(rng.uniform(size=5_000), 0.0005)  # a bounded tail: negative shape
    assert light.method == "pot-gpd" and light.shape < 0 and light.threshold < 1.05


def test_lower_target_means_higher_threshold():
    scores = np.random.default_rng(1).gamma(2.0, size=800)
    thresholds = [calibrate(scores, target).threshold for target in (0.05, 0.01, 0.001, 0.0001)]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == 4


def test_switches_to_the_empirical_quantile_when_the_tail_holds_enough_scores():
    scores = np.random.default_rng(2).standard_normal(MIN_TAIL * 100)
    assert calibrate(scores, 0.01).method == "empirical"
    assert calibrate(scores, 0.009).method.startswith("pot-")


def test_constant_scores_flag_any_rise_and_nan_is_left_out():
    calibration = calibrate(np.array([2.0] * 50 + [np.nan]), 0.01)
    assert calibration.method == "constant" and calibration.samples == 50
    assert 2.0 < calibration.threshold < 2.001


def test_bad_input_is_a_clear_error():
    with pytest.raises(ModelError, match="target_far"):
        calibrate(np.ones(10), 0.0)
    with pytest.raises(ModelError, match="no finite"):
        calibrate(np.array([np.nan, np.inf]), 0.01)
