"""The interface every detector shares.

Conventions (as in river's ``anomaly/base.py`` and pyod's ``models/base.py``): ``score`` is "higher = more
anomalous" (scikit-learn's ``score_samples`` has the opposite sign), scores are computed over a whole batch
in one call, and ``threshold_`` is calibrated on held-back normal data from the training range, never on
labels of the evaluation range.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from anomstream.errors import ModelIntegrityError

BANK_FILE = "bank.json"


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

    @classmethod
    def bank(cls, detectors: Sequence[Detector]) -> DetectorBank:
        """The detectors as one bank (a kind whose detectors stack into arrays overrides this)."""
        return DetectorBank(detectors)

    @classmethod
    def load_bank(cls, directory: Path, device: str = "cpu") -> DetectorBank:
        """Read a bank written by ``DetectorBank.save`` into ``directory``.

        Raises:
            ModelIntegrityError: the bank's index is missing or unreadable (or a detector's files are).
        """
        try:
            count = int(json.loads((Path(directory) / BANK_FILE).read_text())["detectors"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"cannot read {Path(directory) / BANK_FILE}: {exc}") from exc
        return DetectorBank([cls.load(Path(directory) / f"{i:06d}", device=device) for i in range(count)])


class DetectorBank:
    """Many fitted detectors of one kind (a fleet's per-device detectors), scored in one call.

    Row ``i`` of ``X`` is scored by detector ``index[i]``. This base bank calls each detector on its rows;
    a kind whose fitted state stacks into arrays (PCA) overrides it with a bank that scores every row in
    vectorised calls whatever the number of detectors, and stores the stack as one memory-mapped file per
    array, so that a scorer maps a fleet's models rather than reading thousands of folders.
    """

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = list(detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def score(self, X: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Anomaly score per row, each by its own detector, ``(n,)``."""
        out = np.zeros(len(index))
        for i, rows in groups(index):
            out[rows] = self.detectors[i].score(X[rows])
        return out

    def contributions(self, X: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Per-feature contributions per row, each by its own detector, ``(n, F)``."""
        parts: np.ndarray | None = None
        for i, rows in groups(index):
            own = self.detectors[i].contributions(X[rows])
            parts = np.zeros((len(index), own.shape[1])) if parts is None else parts
            parts[rows] = own
        return np.zeros((0, 0)) if parts is None else parts

    def save(self, directory: Path) -> list[str]:
        """Write detector ``i`` into ``directory/{i:06d}``; return the files written, relative to it."""
        written = []
        for i, detector in enumerate(self.detectors):
            written += [f"{i:06d}/{name}" for name in detector.save(Path(directory) / f"{i:06d}")]
        (Path(directory) / BANK_FILE).write_text(json.dumps({"detectors": len(self.detectors)}))
        return [*written, BANK_FILE]


def groups(keys: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Row indices per distinct key (one entry per key, not per row), rows in their original order."""
    if not len(keys):
        return []
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return [(int(sorted_keys[s]), order[s:e]) for s, e in zip(starts, ends, strict=True)]
