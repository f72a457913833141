"""PCA T² + Q detector: statistics, control limits, contributions, persistence."""

from __future__ import annotations

import tracemalloc

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


def svd_reference(rows: np.ndarray, **params: float) -> PCADetector:
    """The detector as the former fit built it, from the SVD of the centred rows (small data only)."""
    reference = PCADetector(**params)
    reference.mean_ = rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(rows - reference.mean_, full_matrices=False)
    eigenvalues = singular**2 / (len(rows) - 1)
    reference.eigenvalues_ = np.maximum(eigenvalues, reference.eigen_floor * eigenvalues[0])
    reference.components_ = vt.T
    explained = np.cumsum(eigenvalues) / eigenvalues.sum()
    reference.n_components_ = int(min(np.searchsorted(explained, reference.variance - 1e-12) + 1, rows.shape[1]))
    reference._set_limits()
    return reference


@pytest.mark.parametrize(
    ("rows", "params"),
    [
        (correlated_rows(4000, seed=10), {"variance": 0.95}),
        (correlated_rows(300, seed=11), {}),
        # Eight features on very different scales, one almost flat: eigenvalues spread over many decades.
        (np.random.default_rng(12).normal(size=(2000, 8)) * np.logspace(1, -3, 8) + 50.0, {"variance": 0.99}),
    ],
)
def test_fit_matches_the_svd_of_the_centred_rows(rows, params):
    fitted, reference = PCADetector(**params).fit(rows), svd_reference(rows, **params)
    assert fitted.n_components_ == reference.n_components_
    assert np.allclose(fitted.eigenvalues_, reference.eigenvalues_, rtol=1e-9, atol=0)
    k = fitted.n_components_
    # Same principal subspace: the projectors agree whatever the eigenvectors' signs.
    projector, reference_projector = (d.components_[:, :k] @ d.components_[:, :k].T for d in (fitted, reference))
    assert np.allclose(projector, reference_projector, rtol=0, atol=1e-9)
    assert fitted.t2_limit_ == reference.t2_limit_
    assert fitted.q_limit_ == pytest.approx(reference.q_limit_, rel=1e-9)
    probe = np.concatenate([rows[:200], rows[:50] + 3.0 * rows.std(axis=0)])
    assert np.allclose(fitted.score(probe), reference.score(probe), rtol=1e-9, atol=0)
    assert np.allclose(fitted.contributions(probe), reference.contributions(probe), rtol=1e-8, atol=1e-12)


def test_fit_is_deterministic_with_positive_largest_loadings():
    rows = correlated_rows(3000, seed=13)
    first, second = PCADetector().fit(rows), PCADetector().fit(rows.copy())
    for name in ("mean_", "components_", "eigenvalues_"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    components = first.components_
    assert (components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])] > 0).all()
    assert (np.diff(first.eigenvalues_) <= 0).all()
    assert np.allclose(components.T @ components, np.eye(5), atol=1e-12)


def test_tall_training_matrix_needs_no_n_by_n_memory():
    # 300,000 x 16 float64 is 38 MB; the former full SVD asked for a 300,000 x 300,000 U (720 GB).
    rows = np.random.default_rng(14).normal(size=(300_000, 16)) @ np.random.default_rng(15).normal(size=(16, 16))
    tracemalloc.start()
    try:
        detector = PCADetector().fit(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < rows.nbytes  # chunks of centred rows and F x F matrices: not even one copy of the input
    assert detector.components_.shape == (16, 16) and detector.eigenvalues_.shape == (16,)
    assert np.allclose(detector.eigenvalues_, np.linalg.eigvalsh(np.cov(rows, rowvar=False))[::-1], rtol=1e-9)


# -- many detectors as one bank ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> list[PCADetector]:
    # detectors of different shapes of normal (k differs), as a fleet's devices would have
    return [PCADetector(variance=v).fit(correlated_rows(400, seed=s)) for s, v in enumerate((0.5, 0.9, 0.99, 0.7))]


def test_a_bank_scores_each_row_as_its_own_detector_does(fleet, tmp_path):
    rng = np.random.default_rng(3)
    X = correlated_rows(2_000, seed=9) + rng.normal(0, 2, size=(2_000, 1)) * (rng.random((2_000, 1)) < 0.1)
    index = rng.integers(0, len(fleet), len(X))
    stacked = PCADetector.bank(fleet)
    assert len({d.n_components_ for d in fleet}) > 1
    written = stacked.save(tmp_path)
    mapped = PCADetector.load_bank(tmp_path)
    assert all(isinstance(mapped.arrays[name], np.memmap) for name in ("mean", "components"))  # mapped, not read
    for bank in (stacked, mapped):
        scores, parts = bank.score(X, index), bank.contributions(X, index)
        for i, detector in enumerate(fleet):
            rows = index == i
            assert np.allclose(scores[rows], detector.score(X[rows]), rtol=1e-12, atol=0)
            assert np.allclose(parts[rows], detector.contributions(X[rows]), rtol=1e-9, atol=1e-12)
        assert np.allclose(parts.sum(axis=1), scores)
    assert np.array_equal(stacked.score(X, index), mapped.score(X, index))
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())


def test_a_rows_bank_score_does_not_depend_on_the_other_rows_of_the_call(fleet):
    rng = np.random.default_rng(4)
    X, index = correlated_rows(10_000, seed=5), rng.integers(0, len(fleet), 10_000)  # more than one chunk
    bank = PCADetector.bank(fleet)
    whole = bank.score(X, index)
    some = rng.permutation(len(X))[:777]
    assert np.array_equal(bank.score(X[some], index[some]), whole[some])


def test_a_damaged_bank_is_refused(fleet, tmp_path):
    PCADetector.bank(fleet).save(tmp_path)
    np.save(tmp_path / "components.npy", np.zeros((len(fleet), 3, 3)))
    with pytest.raises(ModelIntegrityError, match="disagree in shape"):
        PCADetector.load_bank(tmp_path)
    (tmp_path / "mean.npy").unlink()
    with pytest.raises(ModelIntegrityError, match="cannot read pca bank"):
        PCADetector.load_bank(tmp_path)
