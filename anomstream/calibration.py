"""Thresholds for a stated false-alarm rate, from held-back normal scores.

An operator states ``target_far``: the fraction of normal readings that may be flagged. The threshold is the
``1 - target_far`` quantile of the score distribution on normal data, estimated from the held-back normal
scores of the training range. Two estimators, chosen by how much data lies beyond that quantile:

- **Empirical (conformal) quantile** when at least ``MIN_TAIL`` held-back scores are expected above it: the
  ``ceil((n + 1)(1 - target_far))``-th smallest score, which under exchangeability is exceeded by a new
  normal score with probability at most ``target_far`` (split conformal prediction).
- **Peaks over threshold** otherwise (Pickands-Balkema-de Haan; SPOT, Siffer et al., KDD 2017): above a
  high initial level ``t`` (leaving ``peaks`` scores above it) the excesses follow a generalised Pareto
  distribution, fitted by maximum likelihood when there are at least ``MIN_GPD_PEAKS`` of them and with the
  shape bounded to ``[-MAX_SHAPE, MAX_SHAPE]`` so that a few peaks cannot make the tail explode or vanish;
  with fewer peaks the shape is fixed at 0 (an exponential tail, the Gumbel domain of light-tailed scores),
  whose scale is the mean excess. The threshold is SPOT's
  ``t + sigma / xi * ((target_far * n / peaks) ** -xi - 1)``, or ``t + sigma * ln(peaks / (target_far * n))``
  for ``xi = 0``.

Pure: numpy and scipy, no I/O. A calibration is reproducible (MLE from a fixed start, no randomness).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from anomstream.errors import ModelError

MIN_TAIL = 20  # held-back scores expected above the threshold for the empirical quantile to be trusted
MIN_PEAKS = 10  # fewest peaks over the initial level a tail fit uses
MIN_GPD_PEAKS = 50  # fewest peaks for a shape estimate; below, the tail is exponential
MAX_SHAPE = 0.5  # bound on the GPD shape: heavier or shorter tails than this are not estimable from few peaks
PEAK_FRACTION = 0.1  # share of the held-back scores above the initial level, when that gives MIN_PEAKS or more


@dataclass(frozen=True)
class Calibration:
    """How a threshold was set.

    Attributes:
        threshold: the score above which a reading is flagged.
        target_far: the false-alarm rate asked for (per reading).
        method: ``"empirical"``, ``"pot-gpd"``, ``"pot-exponential"`` or ``"constant"`` (all scores equal).
        samples: held-back normal scores used.
        peaks: scores above the initial level (POT only, else 0).
        shape: GPD shape ``xi`` (0 for the exponential tail and the empirical quantile).
        scale: GPD scale ``sigma`` (0 for the empirical quantile).
        held_back_rate: fraction of the held-back scores above the threshold.
    """

    threshold: float
    target_far: float
    method: str
    samples: int
    peaks: int = 0
    shape: float = 0.0
    scale: float = 0.0
    held_back_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def calibrate(scores: np.ndarray, target_far: float) -> Calibration:
    """Threshold for ``target_far`` from held-back normal ``scores`` (non-finite scores are left out).

    Raises:
        ModelError: ``target_far`` outside ``(0, 0.5)``, or no finite score.
    """
    if not 0.0 < target_far < 0.5:
        raise ModelError(f"target_far={target_far} must be in (0, 0.5): a fraction of normal readings")
    finite = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(finite)
    if not n:
        raise ModelError("no finite held-back scores to calibrate a threshold on: check the training data")
    if finite[0] == finite[-1]:
        # Nothing varied: any rise above the constant is unusual. The margin keeps rounding from flagging.
        threshold = float(finite[-1] + 1e-9 * max(abs(finite[-1]), 1.0))
        return _done(threshold, target_far, "constant", finite)
    if target_far * n >= MIN_TAIL:
        rank = min(math.ceil((n + 1) * (1.0 - target_far)), n)  # 1-based order statistic
        return _done(float(finite[rank - 1]), target_far, "empirical", finite)
    return _peaks_over_threshold(finite, target_far)


def _peaks_over_threshold(finite: np.ndarray, target_far: float) -> Calibration:
    """SPOT's quantile from a GPD (or exponential) fit to the excesses over a high initial level."""
    n = len(finite)
    peaks = min(max(MIN_PEAKS, math.ceil(PEAK_FRACTION * n)), n - 1)
    level = float(finite[n - peaks - 1])
    excess = finite[n - peaks :] - level
    excess = excess[excess > 0]
    peaks = len(excess)  # ties at the level are not peaks
    if peaks == 0:
        return _done(float(finite[-1]), target_far, "empirical", finite)
    ratio = target_far * n / peaks  # < 1: the target lies beyond the initial level
    shape, scale, method = 0.0, float(excess.mean()), "pot-exponential"
    if peaks >= MIN_GPD_PEAKS:
        fitted_shape, _, fitted_scale = stats.genpareto.fit(excess, floc=0.0)
        shape = float(np.clip(fitted_shape, -MAX_SHAPE, MAX_SHAPE))
        if shape != fitted_shape:  # bounded: refit the scale for the bounded shape
            _, _, fitted_scale = stats.genpareto.fit(excess, f0=shape, floc=0.0)
        scale, method = float(fitted_scale), "pot-gpd"
    if abs(shape) < 1e-9:
        threshold = level + scale * math.log(1.0 / ratio)
    else:
        threshold = level + scale / shape * (ratio**-shape - 1.0)
    return _done(threshold, target_far, method, finite, peaks, shape, scale)


def _done(
    threshold: float,
    target_far: float,
    method: str,
    finite: np.ndarray,
    peaks: int = 0,
    shape: float = 0.0,
    scale: float = 0.0,
) -> Calibration:
    rate = float((finite > threshold).mean())
    return Calibration(threshold, target_far, method, len(finite), peaks, shape, scale, rate)
