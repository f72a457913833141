"""Isolation Forest: array traversal equals scikit-learn, pickle-free persistence, seeds, attributions."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from anomstream.detectors import make_detector
from anomstream.detectors.iforest import (
    ARRAYS_FILE,
    PARAMS_FILE,
    IsolationForestDetector,
    average_path_length,
)
from anomstream.errors import ModelIntegrityError


def training_rows(n: int = 1500, features: int = 6, seed: int = 0) -> np.ndarray:
    """Correlated normal readings: one fixed mixing of the features, fresh noise per seed."""
    mixing = np.random.default_rng(100 + features).normal(size=(features, features))
    return np.random.default_rng(seed).normal(size=(n, features)) @ mixing


def sklearn_scores(detector: IsolationForestDetector, rows: np.ndarray) -> np.ndarray:
    """The reference: ``-score_samples`` of the scikit-learn estimator the detector was fitted with."""
    assert detector._forest is not None
    return -detector._forest.score_samples(rows)


@pytest.fixture(scope="module")
def fitted() -> IsolationForestDetector:
    detector = make_detector("iforest", n_estimators=60)
    assert isinstance(detector, IsolationForestDetector)
    return detector.fit(training_rows(), seed=3)


def test_array_traversal_equals_sklearn_score_samples(fitted):
    rng = np.random.default_rng(1)
    rows = np.vstack([training_rows(800, seed=2) * 1.5, rng.uniform(-40, 40, size=(200, 6))])
    expected = sklearn_scores(fitted, rows)
    assert np.abs(fitted.score_arrays(rows) - expected).max() < 1e-6
    # Same float32 rounding and the same summation order: not just close, identical.
    assert np.array_equal(fitted.score_arrays(rows), expected)
    assert np.array_equal(fitted.score(rows), expected)


def test_numpy_and_rebuilt_tree_traversals_sum_the_same_path_lengths(fitted):
    rows = training_rows(700, seed=13) * 2.0
    rows[::9, 1] = np.nan
    compiled = fitted._compiled_forest()
    walked = np.concatenate([compiled._walk(chunk, credit=False)[0] for chunk in compiled._chunks(rows)])
    assert np.array_equal(walked, compiled._apply_trees(rows))


def test_traversal_includes_the_average_path_length_of_multi_sample_leaves():
    # Duplicated rows end in leaves holding several samples (the trees stop at max_depth or identical values).
    rows = np.repeat(training_rows(40, 3, seed=4), 10, axis=0)
    detector = IsolationForestDetector(n_estimators=30, max_samples=256).fit(rows, seed=0)
    arrays = detector._fitted_arrays()
    sizes = arrays.n_node_samples[arrays.left < 0]
    assert (sizes[sizes > 0] > 2).any()
    expected = sklearn_scores(detector, rows[:50])
    assert np.abs(detector.score_arrays(rows[:50]) - expected).max() < 1e-6


def test_subsampled_features_and_missing_values_match_sklearn():
    rows = training_rows(600, 5, seed=5)
    rows[::13, 2] = np.nan
    detector = IsolationForestDetector(n_estimators=40, max_features=0.6).fit(rows, seed=1)
    probe = training_rows(300, 5, seed=6)
    probe[::7, 1] = np.nan
    expected = sklearn_scores(detector, probe)
    assert np.abs(detector.score_arrays(probe) - expected).max() < 1e-6


def test_average_path_length_formula():
    n = np.array([0, 1, 2, 3, 256])
    expected = [0.0, 0.0, 1.0, 2 * (np.log(2) + np.euler_gamma) - 4 / 3]
    assert np.allclose(average_path_length(n)[:4], expected)
    assert average_path_length(n)[4] == pytest.approx(2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256)


def test_save_load_round_trip_without_pickle(fitted, tmp_path: Path, monkeypatch):
    written = fitted.save(tmp_path)
    assert sorted(written) == sorted([ARRAYS_FILE, PARAMS_FILE])
    json.loads((tmp_path / PARAMS_FILE).read_text())
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = IsolationForestDetector.load(tmp_path)
    assert loaded._forest is None  # no estimator: scores come from the arrays
    rows = training_rows(500, seed=7)
    assert np.array_equal(loaded.score(rows), fitted.score(rows))
    assert np.allclose(loaded.contributions(rows[:20]), fitted.contributions(rows[:20]))


def test_damaged_arrays_are_refused(fitted, tmp_path: Path):
    fitted.save(tmp_path)
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name].copy() for name in npz.files}
    arrays["left"][0, 0] = 10**6  # a child far outside the tree
    with open(tmp_path / ARRAYS_FILE, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ModelIntegrityError):
        IsolationForestDetector.load(tmp_path)


def test_same_seed_same_scores_other_seed_other_forest():
    rows = training_rows(seed=8)
    probe = training_rows(200, seed=9)
    first = IsolationForestDetector(n_estimators=30).fit(rows, seed=5).score(probe)
    again = IsolationForestDetector(n_estimators=30).fit(rows, seed=5).score(probe)
    other = IsolationForestDetector(n_estimators=30).fit(rows, seed=6).score(probe)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_contributions_credit_the_feature_that_isolates_a_point(fitted):
    rows = training_rows(seed=10)[:50].copy()
    rows[:, 4] += 60.0  # far out along feature 4 only
    credit = fitted.contributions(rows)
    assert credit.shape == (50, 6)
    assert (credit >= 0).all()
    assert (credit.argmax(axis=1) == 4).mean() > 0.9


def test_credits_telescope_to_the_path_shortening(fitted):
    rows = training_rows(100, seed=11)
    credits = fitted._compiled_forest().credits(rows)
    compiled = fitted._compiled_forest()
    mean_path = -np.log2(fitted.score_arrays(rows)) * compiled.c_psi
    assert np.allclose(credits.sum(axis=1), compiled.c_psi - mean_path)


def test_sklearn_reference_is_the_documented_formula():
    rows = training_rows(400, 3, seed=12)
    forest = IsolationForest(n_estimators=20, random_state=0).fit(rows)
    detector = IsolationForestDetector(n_estimators=20, max_samples=256).fit(rows, seed=0)
    assert np.allclose(detector.score(rows), -forest.score_samples(rows))
