"""The interface every detector shares.

Conventions (as in river's ``anomaly/base.py`` and pyod's ``models/base.py``): ``score`` is "higher = more
anomalous" (scikit-learn's ``score_samples`` has the opposite sign), scores are computed over a whole batch
in one call, and ``threshold_`` is calibrated on held-back normal data from the training range, never on
labels of the evaluation range.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np


class Detector(ABC):
    """An anomaly detector over feature arrays built by ``anomstream.features``.

    ``X`` is ``(n, F)`` for point detectors, or ``(n, W, F)`` windows for sequence detectors
    (``window > 1`` in the feature spec). Contributions are per feature, ``(n, F)``; the model
    (``anomstream.model``) sums them into per-channel shares with the feature pipeline's feature-to-channel
    map.
    """

    name: ClassVar[str]
    threshold_: float

    @abstractmethod
    def fit(self, X: np.ndarray, seed: int = 0) -> Self:
        """Fit on normal training features (deterministic for a seed)."""

    @abstractmethod
    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row, ``(n,)`` float64; higher is more anomalous."""

    @abstractmethod
    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature part of each row's score, ``(n, F)``, non-negative (need not be normalised)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-serialisable (recorded in the model manifest)."""

    @abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the fitted state into ``directory`` without pickle; return the file names written."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, device: str = "cpu") -> Self:
        """Read a fitted detector written by ``save``; ``device`` is ``cpu`` or ``cuda``."""
