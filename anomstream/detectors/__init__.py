"""Detector registry: name -> class, imported lazily.

The autoencoders need torch; importing this package (or making an ``iforest`` or ``pca`` detector) does not
import it, so a CPU-only scorer of tree or PCA models starts fast and lean.
"""

from __future__ import annotations

import importlib
from typing import Any

from anomstream.detectors.base import Detector, DetectorBank
from anomstream.errors import ModelError

# name -> (module, class); the names are part of the command-line contract (docs/design.md).
_REGISTRY: dict[str, tuple[str, str]] = {
    "iforest": ("anomstream.detectors.iforest", "IsolationForestDetector"),
    "pca": ("anomstream.detectors.pca", "PCADetector"),
    "dense-ae": ("anomstream.detectors.autoencoder", "DenseAutoencoder"),
    "conv-ae": ("anomstream.detectors.autoencoder", "ConvAutoencoder"),
}

DETECTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)

__all__ = ["DETECTOR_NAMES", "Detector", "DetectorBank", "detector_class", "make_detector"]


def detector_class(name: str) -> type[Detector]:
    """The detector class registered under ``name``.

    Raises:
        ModelError: the name is unknown.
    """
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown detector {name!r}: choose one of {', '.join(DETECTOR_NAMES)}") from None
    cls: type[Detector] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_detector(name: str, **params: Any) -> Detector:
    """A new, unfitted detector ``name`` with hyper-parameters ``params``.

    Raises:
        ModelError: the name is unknown or a parameter is not one the detector takes.
    """
    cls = detector_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ModelError(f"detector {name!r} does not take parameters {sorted(params)}: {exc}") from exc
