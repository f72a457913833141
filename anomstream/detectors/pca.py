"""PCA monitoring with Hotelling's T² and the residual Q (SPE) statistic: the classic industrial baseline.

A principal component model of normal operation splits each feature row ``x`` (centred with the training
mean) into a part inside the ``k``-dimensional principal subspace and a residual ``e``:

- ``T² = sum_a t_a² / lambda_a`` (Hotelling): how unusual the row is *within* normal variation;
- ``Q = |e|²`` (squared prediction error): how far the row leaves the normal correlation structure.

The score is the combined index of Yue & Qin (2001), ``T² / T²_lim + Q / Q_lim``, with ``T²_lim`` the
chi-square ``alpha`` quantile with ``k`` degrees of freedom and ``Q_lim`` the Jackson–Mudholkar (1979)
limit from the residual eigenvalues: each statistic counts in units of its own control limit, so a row at
either limit scores about 1. ``k`` is the fewest components explaining ``variance`` of the training
variance. Every eigenvalue is floored at ``eigen_floor`` times the largest, so that directions in which the
short training period happened not to move (a sensor that stayed flat) do not make the limits vanish.

Contributions split both statistics per feature: ``Q`` into the squared residuals ``e_j²``, and ``T²`` by
its symmetric square root, ``T² = |M^{1/2} x|²`` with ``M = P Λ⁻¹ Pᵀ``, into ``(M^{1/2} x)_j²``; each
part is divided by its limit, so the contributions are non-negative and sum to the score.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from scipy import stats

from anomstream.detectors.base import BANK_FILE, Detector, DetectorBank
from anomstream.errors import ModelError, ModelIntegrityError

logger = logging.getLogger(__name__)

ARRAYS_FILE = "pca.npz"
PARAMS_FILE = "pca.json"
_ARRAYS = ("mean", "components", "eigenvalues")
_COVARIANCE_CHUNK_ROWS = 65_536  # rows centred at a time while accumulating the covariance
_BANK_ARRAYS = ("mean", "components", "eigenvalues", "n_components", "t2_limit", "q_limit")
_BANK_CHUNK_ROWS = 4096  # rows whose detectors' (F, F) components are gathered at a time


class PCADetector(Detector):
    """PCA with Hotelling T² and Q (SPE) statistics, combined in units of their control limits.

    Args:
        variance: fraction of the training variance the principal subspace keeps (sets ``k``).
        alpha: confidence level of the control limits.
        eigen_floor: smallest eigenvalue, relative to the largest.
    """

    name = "pca"

    def __init__(self, variance: float = 0.9, alpha: float = 0.99, eigen_floor: float = 1e-6) -> None:
        if not 0.0 < variance <= 1.0 or not 0.0 < alpha < 1.0 or not 0.0 < eigen_floor < 1.0:
            raise ModelError(
                "pca needs 0 < variance <= 1, 0 < alpha < 1 and 0 < eigen_floor < 1; got "
                f"variance={variance}, alpha={alpha}, eigen_floor={eigen_floor}"
            )
        self.variance = variance
        self.alpha = alpha
        self.eigen_floor = eigen_floor
        self.threshold_ = float("nan")
        self.mean_ = np.zeros(0)
        self.components_ = np.zeros((0, 0))  # (F, F) eigenvectors as columns, by decreasing eigenvalue
        self.eigenvalues_ = np.zeros(0)
        self.n_components_ = 0
        self.t2_limit_ = float("nan")
        self.q_limit_ = float("nan")

    def fit(self, X: np.ndarray, seed: int = 0) -> Self:
        """Fit the principal subspace and the control limits (deterministic; ``seed`` is unused).

        The subspace comes from the eigen-decomposition of the ``F x F`` sample covariance, accumulated in
        chunks of rows: time ``O(n F²)``, memory ``O(F²)`` beyond the input, so every training row is used
        however many there are. Eigenvalues are the variances along the components, in decreasing order (as
        the squared singular values of the centred rows over ``n - 1`` would be); each component's
        largest-magnitude entry is positive.
        """
        rows = _as_rows(X)
        if len(rows) < 2:
            raise ModelError(f"pca needs at least 2 training rows, got {len(rows)}")
        self.mean_ = rows.mean(axis=0)
        # Eigen-decomposition of the F x F covariance rather than an SVD of the centred rows: a full SVD
        # builds an n x n U (584 GiB at 280,000 rows), and even a thin one an n x F copy plus workspace.
        eigenvalues, vectors = np.linalg.eigh(_covariance(rows, self.mean_))
        order = np.argsort(eigenvalues, kind="stable")[::-1]  # eigh sorts ascending; keep decreasing
        # Rounding can leave the eigenvalues of flat directions a hair below zero; they are variances.
        eigenvalues = np.maximum(eigenvalues[order], 0.0)
        self.components_ = _fix_signs(vectors[:, order])
        top = max(float(eigenvalues[0]), 1e-12)
        self.eigenvalues_ = np.maximum(eigenvalues, self.eigen_floor * top)
        explained = np.cumsum(eigenvalues) / max(float(eigenvalues.sum()), 1e-300)
        self.n_components_ = int(min(np.searchsorted(explained, self.variance - 1e-12) + 1, rows.shape[1]))
        self._set_limits()
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Combined index ``T²/T²_lim + Q/Q_lim`` per row."""
        t2, q = self.statistics(X)
        return t2 / self.t2_limit_ + q / self.q_limit_

    def statistics(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hotelling ``T²`` and ``Q`` (SPE) per row."""
        scores, residual = self._project(X)
        t2 = (scores**2 / self.eigenvalues_[: self.n_components_]).sum(axis=1)
        return t2, (residual**2).sum(axis=1)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature parts of the combined index (non-negative, summing to the score), ``(n, F)``."""
        scores, residual = self._project(X)
        k = self.n_components_
        # M^{1/2} x = P Λ^{-1/2} Pᵀ x = P (t / sqrt(λ)).
        t2_root = (scores / np.sqrt(self.eigenvalues_[:k])) @ self.components_[:, :k].T
        parts = t2_root**2 / self.t2_limit_ + residual**2 / self.q_limit_
        if np.ndim(X) == 3:
            parts = parts.reshape(np.shape(X)).sum(axis=1)
        return parts

    def params(self) -> dict[str, Any]:
        """Hyper-parameters."""
        return {"variance": self.variance, "alpha": self.alpha, "eigen_floor": self.eigen_floor}

    def save(self, directory: Path) -> list[str]:
        """Write ``pca.npz`` (mean, eigenvectors, eigenvalues) and ``pca.json`` (parameters, limits)."""
        if not self.n_components_:
            raise ModelError("cannot save an unfitted pca detector: call fit first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ARRAYS_FILE, "wb") as fh:
            np.savez(fh, mean=self.mean_, components=self.components_, eigenvalues=self.eigenvalues_)
        state = {
            "detector": self.name,
            "params": self.params(),
            "n_components": self.n_components_,
            "threshold": None if np.isnan(self.threshold_) else self.threshold_,
        }
        (directory / PARAMS_FILE).write_text(json.dumps(state, indent=2))
        return [ARRAYS_FILE, PARAMS_FILE]

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> Self:
        """Read a detector written by ``save`` (numpy on the CPU whatever ``device`` says: it is cheap)."""
        directory = Path(directory)
        try:
            state = json.loads((directory / PARAMS_FILE).read_text())
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
                arrays = {name: np.asarray(npz[name], dtype=np.float64) for name in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelIntegrityError(f"cannot read pca detector from {directory}: {exc}") from exc
        n_features = len(arrays["mean"])
        k = int(state["n_components"])
        if arrays["components"].shape != (n_features, n_features) or len(arrays["eigenvalues"]) != n_features:
            raise ModelIntegrityError(f"pca arrays in {directory} disagree in shape: artifact damaged")
        if not 1 <= k <= n_features or not (arrays["eigenvalues"] > 0).all():
            raise ModelIntegrityError(f"pca state in {directory} is inconsistent: artifact damaged")
        detector = cls(**state["params"])
        detector.mean_, detector.components_, detector.eigenvalues_ = (arrays[name] for name in _ARRAYS)
        detector.n_components_ = k
        detector.threshold_ = float("nan") if state.get("threshold") is None else float(state["threshold"])
        detector._set_limits()
        return detector

    @classmethod
    def bank(cls, detectors: Sequence[Detector]) -> PCABank:
        """The detectors' arrays stacked into one :class:`PCABank`."""
        pcas = [d for d in detectors if isinstance(d, PCADetector)]
        if len(pcas) != len(detectors) or not pcas:
            raise ModelError("a pca bank holds one or more fitted pca detectors only")
        arrays = {
            "mean": np.stack([d.mean_ for d in pcas]),
            # C order, as a loaded bank's: einsum's summation order (so the last bit) follows the strides
            "components": np.ascontiguousarray(np.stack([d.components_ for d in pcas])),
            "eigenvalues": np.stack([d.eigenvalues_ for d in pcas]),
            "n_components": np.array([d.n_components_ for d in pcas], dtype=np.int64),
            "t2_limit": np.array([d.t2_limit_ for d in pcas]),
            "q_limit": np.array([d.q_limit_ for d in pcas]),
        }
        return PCABank(pcas[0].params(), arrays)

    @classmethod
    def load_bank(cls, directory: Path, device: str = "cpu") -> PCABank:
        """Map a bank written by ``PCABank.save`` (``.npy`` files opened read-only with ``mmap_mode``)."""
        return PCABank.load(directory)

    def _set_limits(self) -> None:
        """Control limits for T² (chi-square) and Q (Jackson–Mudholkar) at confidence ``alpha``."""
        k = self.n_components_
        self.t2_limit_ = _chi2_quantile(self.alpha, k)
        residual = self.eigenvalues_[k:]
        if not len(residual):
            # All components kept: Q is rounding noise; any positive limit keeps the index finite.
            self.q_limit_ = float(self.eigen_floor * self.eigenvalues_[0])
            return
        theta1, theta2, theta3 = (float((residual**p).sum()) for p in (1, 2, 3))
        h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2**2)
        z = _normal_quantile(self.alpha)
        if h0 <= 0.0:
            # The approximation needs h0 > 0; fall back to the Box (1954) scaled chi-square limit.
            g, dof = theta2 / theta1, theta1**2 / theta2
            self.q_limit_ = float(g * stats.chi2.ppf(self.alpha, dof))
            return
        term = z * np.sqrt(2.0 * theta2 * h0**2) / theta1 + 1.0 + theta2 * h0 * (h0 - 1.0) / theta1**2
        self.q_limit_ = float(theta1 * term ** (1.0 / h0))

    def _project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Principal scores ``(n, k)`` and residuals ``(n, F)`` of each row."""
        if not self.n_components_:
            raise ModelError("pca detector is not fitted: call fit or load first")
        rows = _as_rows(X)
        if rows.shape[1] != len(self.mean_):
            raise ModelError(f"pca expects {len(self.mean_)} features, got {rows.shape[1]}")
        centred = rows - self.mean_
        loadings = self.components_[:, : self.n_components_]
        scores = centred @ loadings
        return scores, centred - scores @ loadings.T


class PCABank(DetectorBank):
    """Many PCA detectors as stacked arrays: ``mean (D, F)``, ``components (D, F, F)``, ``eigenvalues (D, F)``,
    ``n_components``, ``t2_limit`` and ``q_limit (D,)``.

    Every row is projected on its own detector's components in one ``einsum`` over the gathered
    ``(F, F)`` matrices (in chunks of rows, so the gathered copy stays bounded): the cost per row is that of
    one detector, whatever the number of detectors, and each row's score depends on that row and its
    detector alone. Components beyond a detector's ``k`` are masked to zero, which leaves the residual the
    same as a ``k``-column projection. ``detectors`` are views of the arrays: a loaded bank's are views of
    the memory-mapped files.
    """

    def __init__(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.params = params
        self.arrays = arrays
        n = len(arrays["mean"])
        self._keep = np.arange(arrays["mean"].shape[1])[None, :] < arrays["n_components"][:, None]
        super().__init__([self._detector(i) for i in range(n)])

    def score(self, X: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Combined index ``T²/T²_lim + Q/Q_lim`` per row, by the row's own detector."""
        out = np.zeros(len(index))
        for rows, scores, residual in self._projections(X, index):
            idx = index[rows]
            t2 = (scores**2 / self.arrays["eigenvalues"][idx]).sum(axis=1)
            out[rows] = t2 / self.arrays["t2_limit"][idx] + (residual**2).sum(axis=1) / self.arrays["q_limit"][idx]
        return out

    def contributions(self, X: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Per-feature parts of each row's combined index (as :meth:`PCADetector.contributions`)."""
        out = np.zeros(_as_rows(X).shape)
        for rows, scores, residual in self._projections(X, index):
            idx = index[rows]
            root = np.einsum("nk,nfk->nf", scores / np.sqrt(self.arrays["eigenvalues"][idx]),
                             self.arrays["components"][idx])  # fmt: skip
            out[rows] = root**2 / self.arrays["t2_limit"][idx, None] + residual**2 / self.arrays["q_limit"][idx, None]
        if np.ndim(X) == 3:
            return out.reshape(np.shape(X)).sum(axis=1)
        return out

    def save(self, directory: Path) -> list[str]:
        """Write one ``.npy`` file per array and ``bank.json`` (parameters, count)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in _BANK_ARRAYS:
            np.save(directory / f"{name}.npy", np.ascontiguousarray(self.arrays[name]), allow_pickle=False)
        state = {"detector": PCADetector.name, "params": self.params, "detectors": len(self)}
        (directory / BANK_FILE).write_text(json.dumps(state, indent=1))
        return [*(f"{name}.npy" for name in _BANK_ARRAYS), BANK_FILE]

    @classmethod
    def load(cls, directory: Path) -> PCABank:
        """Map a bank written by ``save``.

        Raises:
            ModelIntegrityError: a file is missing or the arrays disagree in shape.
        """
        directory = Path(directory)
        try:
            state = json.loads((directory / BANK_FILE).read_text())
            arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                      for name in _BANK_ARRAYS}  # fmt: skip
            n, n_features = arrays["mean"].shape
            params, count = dict(state["params"]), int(state["detectors"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"cannot read pca bank from {directory}: {exc}") from exc
        shapes_agree = (
            count == n
            and arrays["components"].shape == (n, n_features, n_features)
            and arrays["eigenvalues"].shape == (n, n_features)
            and all(arrays[name].shape == (n,) for name in ("n_components", "t2_limit", "q_limit"))
        )
        if not shapes_agree:
            raise ModelIntegrityError(f"pca bank arrays in {directory} disagree in shape: artifact damaged")
        k = np.asarray(arrays["n_components"])
        if ((k < 1) | (k > n_features)).any() or (np.asarray(arrays["eigenvalues"]) <= 0).any():
            raise ModelIntegrityError(f"pca bank in {directory} is inconsistent: artifact damaged")
        return cls(params, arrays)

    def _detector(self, i: int) -> PCADetector:
        detector = PCADetector(**self.params)
        detector.mean_ = self.arrays["mean"][i]
        detector.components_ = self.arrays["components"][i]
        detector.eigenvalues_ = self.arrays["eigenvalues"][i]
        detector.n_components_ = int(self.arrays["n_components"][i])
        detector.t2_limit_ = float(self.arrays["t2_limit"][i])
        detector.q_limit_ = float(self.arrays["q_limit"][i])
        return detector

    def _projections(self, X: np.ndarray, index: np.ndarray) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Per chunk of rows: the rows, their masked principal scores ``(m, F)`` and residuals ``(m, F)``."""
        rows_all = _as_rows(X)
        if rows_all.shape[1] != self.arrays["mean"].shape[1]:
            raise ModelError(f"pca expects {self.arrays['mean'].shape[1]} features, got {rows_all.shape[1]}")
        for start in range(0, len(index), _BANK_CHUNK_ROWS):
            rows = slice(start, start + _BANK_CHUNK_ROWS)
            idx = index[rows]
            centred = rows_all[rows] - self.arrays["mean"][idx]
            components = self.arrays["components"][idx]
            scores = np.einsum("nf,nfk->nk", centred, components) * self._keep[idx]
            yield rows, scores, centred - np.einsum("nk,nfk->nf", scores, components)


@functools.lru_cache(maxsize=1024)
def _chi2_quantile(alpha: float, dof: int) -> float:
    """``chi2.ppf``, cached: a fleet's thousands of fits ask for the same few (scipy's costs ~0.3 ms)."""
    return float(stats.chi2.ppf(alpha, dof))


@functools.lru_cache(maxsize=64)
def _normal_quantile(alpha: float) -> float:
    """``norm.ppf``, cached."""
    return float(stats.norm.ppf(alpha))


def _covariance(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Sample covariance ``(F, F)`` of ``rows`` about ``mean``, accumulated over bounded chunks of rows.

    Chunks keep the centred copy at ``_COVARIANCE_CHUNK_ROWS x F`` whatever ``n`` is, so fitting needs
    memory for the input and ``F x F`` matrices only.
    """
    n, n_features = rows.shape
    total = np.zeros((n_features, n_features))
    for start in range(0, n, _COVARIANCE_CHUNK_ROWS):
        centred = rows[start : start + _COVARIANCE_CHUNK_ROWS] - mean
        total += centred.T @ centred
    return total / (n - 1)


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) with their largest-magnitude entry positive.

    An eigenvector's sign is arbitrary (LAPACK's choice may differ between builds); fixing it makes the
    saved components a function of the data alone. Scores, statistics and contributions do not depend on it.
    """
    largest = np.abs(vectors).argmax(axis=0)
    signs = np.where(vectors[largest, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)
    return vectors * signs


def _as_rows(X: np.ndarray) -> np.ndarray:
    """``(n, F)`` float64 rows; windows ``(n, W, F)`` are flattened."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        return X.reshape(len(X), -1)
    if X.ndim != 2:
        raise ModelError(f"pca expects (n, F) or (n, W, F) features, got shape {X.shape}")
    return X
