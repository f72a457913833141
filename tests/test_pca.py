"""PCA T² + Q detector: statistics, control limits, contributions, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from anomstream.detectors import make_detector
from anomstream.detectors.pca import ARRAYS_FILE, PARAMS_FILE, PCADetector
from anomstream.errors import ModelError, ModelIntegrityError


def correlated_rows(n: int, seed: int) -> np.ndarray:
    """Five features driven by two latent factors plus small noise (a rank-2 normal process)."""
    rng = np.random.default_rng(seed)
    loadings = np.random.default_rng(42).normal(size=(2, 5))
    return rng.normal(size=(n, 2)) @ loadings + 0.05 * rng.normal(size=(n, 5))


@pytest.fixture(scope="module")
def fitted() -> PCADetector:
    detector = make_detector("pca", variance=0.95)
    assert isinstance(detector, PCADetector)
    return detector.fit(correlated_rows(4000, seed=0))


def test_subspace_has_the_latent_dimension(fitted):
    assert fitted.n_components_ == 2


def test_statistics_follow_their_definitions(fitted):
    rows = correlated_rows(50, seed=1)
    t2, q = fitted.statistics(rows)
    centred = rows - fitted.mean_
    loadings = fitted.components_[:, :2]
    scores = centred @ loadings
    assert np.allclose(t2, (scores**2 / fitted.eigenvalues_[:2]).sum(axis=1))
    assert np.allclose(q, ((centred - scores @ loadings.T) ** 2).sum(axis=1))
    assert fitted.t2_limit_ == pytest.approx(stats.chi2.ppf(0.99, 2))


def test_control_limits_hold_about_their_confidence_on_normal_data(fitted):
    t2, q = fitted.statistics(correlated_rows(20000, seed=2))
    assert 0.97 < (t2 <= fitted.t2_limit_).mean() < 1.0
    assert 0.97 < (q <= fitted.q_limit_).mean() < 1.0


def test_broken_correlation_raises_q_and_a_large_excursion_raises_t2(fitted):
    normal = correlated_rows(200, seed=3)
    broken = normal.copy()
    broken[:, 3] += 1.0  # leaves the principal subspace
    far = normal * 6.0  # stays in the subspace, far out
    t2_n, q_n = fitted.statistics(normal)
    t2_b, q_b = fitted.statistics(broken)
    t2_f, _ = fitted.statistics(far)
    assert np.median(q_b) > 20 * np.median(q_n)
    assert np.median(t2_f) > 20 * np.median(t2_n)
    assert (fitted.score(broken) > fitted.score(normal)).mean() > 0.95


def test_contributions_are_non_negative_sum_to_the_score_and_point_at_the_cause(fitted):
    rows = correlated_rows(100, seed=4)
    rows[:, 3] += 1.0
    parts = fitted.contributions(rows)
    assert (parts >= 0).all()
    assert np.allclose(parts.sum(axis=1), fitted.score(rows))
    assert (parts.argmax(axis=1) == 3).mean() > 0.9


def test_windows_are_flattened_and_contributions_folded_per_feature():
    windows = correlated_rows(3000, seed=5).reshape(1000, 3, 5)
    detector = PCADetector().fit(windows)
    assert detector.score(windows).shape == (1000,)
    assert detector.contributions(windows).shape == (1000, 5)


def test_save_load_gives_identical_scores(fitted, tmp_path):
    assert sorted(fitted.save(tmp_path)) == sorted([ARRAYS_FILE, PARAMS_FILE])
    loaded = PCADetector.load(tmp_path)
    rows = correlated_rows(300, seed=6)
    assert np.array_equal(loaded.score(rows), fitted.score(rows))
    assert loaded.params() == fitted.params()


def test_damaged_artifact_is_refused(fitted, tmp_path):
    fitted.save(tmp_path)
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    with open(tmp_path / ARRAYS_FILE, "wb") as fh:
        np.savez(fh, **{**arrays, "eigenvalues": arrays["eigenvalues"][:3]})
    with pytest.raises(ModelIntegrityError):
        PCADetector.load(tmp_path)


def test_flat_training_feature_keeps_limits_finite():
    rows = correlated_rows(500, seed=7)
    rows[:, 4] = 1.0  # a sensor that never moved in training
    detector = PCADetector().fit(rows)
    assert np.isfinite(detector.q_limit_) and detector.q_limit_ > 0
    assert np.isfinite(detector.score(rows + 0.5)).all()


def test_invalid_parameters_are_rejected():
    with pytest.raises(ModelError):
        PCADetector(variance=1.5)
