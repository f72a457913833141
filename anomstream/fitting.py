"""Fitting and calibrating one detector, and many of them in parallel: on this machine's cores or a cluster's.

:meth:`anomstream.model.AnomalyModel.fit` builds the features once, then asks for one :class:`FitJob` per
detector: the global one, and with ``per_device`` one per device. A job fits the detector on its rows and
sets its threshold from out-of-fold scores (``docs/alarms.md``). Jobs are independent and seeded, so they run
anywhere with the same result: in this process, in joblib's worker processes (``jobs``), or on the workers of
a Dask distributed scheduler (``cluster``, through joblib's Dask backend) for fleets beyond one machine.

A device keeps its own detector only when it is worth it (:func:`worse_than_global`): it has at least
``min_device_rows`` training rows, and on its last held-back block it flags no more readings than the
global detector does. Otherwise the global detector scores it, and its records say so (``scored_by``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from joblib import Parallel, delayed, parallel_config

from anomstream.calibration import Calibration, calibrate
from anomstream.detectors import Detector, make_detector
from anomstream.errors import ConfigError
from anomstream.features import trailing_max, trailing_mean

if TYPE_CHECKING:
    from anomstream.model import ModelConfig

logger = logging.getLogger(__name__)

MIN_FIT_ROWS = 20  # fewest rows a detector is fitted on (a device with fewer uses the global detector)
CONNECT_TIMEOUT_S = 30.0  # to reach a Dask scheduler


def postprocess(raw: np.ndarray, device_id: np.ndarray, smoothing: int, hold: int) -> np.ndarray:
    """Causal per-device smoothing (trailing mean) then alarm hold (trailing max) of detector scores."""
    return trailing_max(trailing_mean(raw, device_id, smoothing), device_id, hold)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Rows:
    """The training rows of one job (a device's, or all of them), with their roles (one entry per row).

    Attributes:
        features: the rows' features (an array, or the sequence windows of ``conv-ae``).
        device_id: the rows' devices.
        usable: the row may be fitted on (its feature windows are full).
        calibratable: the row's smoothed, held score may calibrate (its smoothing and hold reach no
            warm-up row).
        fold: the consecutive block of its device's rows the row is in (``calibration_folds`` blocks).
        fit: with one fold only, the row is fitted on (else ``usable`` decides).
        validation: with one fold only, the row calibrates.
    """

    features: Any
    device_id: np.ndarray
    usable: np.ndarray
    calibratable: np.ndarray
    fold: np.ndarray
    fit: np.ndarray
    validation: np.ndarray

    def take(self, index: np.ndarray) -> Rows:
        """The rows at ``index`` (ascending)."""
        masks = (self.usable, self.calibratable, self.fold, self.fit, self.validation)
        return Rows(self.features[index], self.device_id[index], *(m[index] for m in masks))


@dataclass(frozen=True)
class Fitted:
    """A fitted, calibrated detector.

    Attributes:
        detector: fitted on all usable rows (with one fold, on the fit rows).
        calibration: how its threshold was set.
        held_out: ``(n,)`` per row of the job, the out-of-fold post-processed score; NaN for rows that did
            not calibrate.
    """

    detector: Detector
    calibration: Calibration
    held_out: np.ndarray


@dataclass(frozen=True)
class FitJob:
    """What every fit of one model shares (sent to workers with each device's rows; picklable)."""

    detector: str
    detector_params: dict[str, Any]
    config: ModelConfig
    seed: int

    def run(self, rows: Rows) -> Fitted:
        """Fit on ``rows`` and calibrate the threshold on their held-back scores."""
        folds = self.config.calibration_folds
        held_out = np.full(len(rows.device_id), np.nan)
        if folds > 1:
            for k in range(folds):
                train = rows.usable & (rows.fold != k)
                if train.sum() >= MIN_FIT_ROWS:
                    held = rows.calibratable & (rows.fold == k)
                    held_out[held] = self._scores(self._fitted(rows.features[train]), rows)[held]
            detector = self._fitted(rows.features[rows.usable])
        else:
            detector = self._fitted(rows.features[rows.fit])
            # Score the fit rows too: smoothing and hold of the first validation rows reach back into them.
            held_out[rows.validation] = self._scores(detector, rows)[rows.validation]
        calibration = calibrate(held_out[np.isfinite(held_out)], self.config.target_far)
        detector.threshold_ = calibration.threshold
        return Fitted(detector, calibration, held_out)

    def _fitted(self, features: Any) -> Detector:
        return make_detector(self.detector, **self.detector_params).fit(features, seed=self.seed)

    def _scores(self, detector: Detector, rows: Rows) -> np.ndarray:
        return postprocess(detector.score(rows.features), rows.device_id, self.config.smoothing, self.config.hold)


def worse_than_global(
    own: Fitted, global_held_out: np.ndarray, global_threshold: float, fold: np.ndarray, target_far: float
) -> bool:
    """Whether a device's own detector flags more of its last held-back block than the global one does.

    Both detectors' out-of-fold scores of the block come from fits without it. The own detector is judged
    with a threshold calibrated on its other blocks only, so that the block is new to it; the global
    threshold saw the block among every device's (a small advantage, for a fleet of many devices).

    Args:
        own: the device's own fit.
        global_held_out: the global detector's out-of-fold scores of the device's rows.
        global_threshold: the global detector's threshold.
        fold: the device's rows' blocks.
        target_far: the false-alarm rate the thresholds are calibrated for.
    """
    scored = np.isfinite(own.held_out) & np.isfinite(global_held_out)
    last = scored & (fold == fold.max())
    earlier = np.isfinite(own.held_out) & ~last
    if not last.any() or not earlier.any():
        return False
    own_threshold = calibrate(own.held_out[earlier], target_far).threshold
    own_rate = float((own.held_out[last] > own_threshold).mean())
    return own_rate > float((global_held_out[last] > global_threshold).mean())


@dataclass(frozen=True)
class PooledTails:
    """Per-device thresholds from one tail estimate (:func:`pool_tails`).

    Attributes:
        thresholds: per device, its median + the pooled threshold × its spread.
        calibration: the pooled calibration, on the normalised scores.
        calibrations: per device, its threshold and the rate of its own held-back scores above it.
    """

    thresholds: dict[str, float]
    calibration: Calibration
    calibrations: dict[str, Calibration]


def pool_tails(fits: list[tuple[str, Fitted]], target_far: float) -> PooledTails:
    """Thresholds for devices' own detectors from their held-back scores pooled.

    Each device's out-of-fold scores are centred on their median and scaled by their spread up to the 90th
    percentile (both well estimated from a few hundred scores); the normalised scores of all devices are
    calibrated together, where ``target_far`` × devices × readings gives enough of a tail to see (an
    empirical quantile for 20 devices of 1,000 readings at 0.1 %); each device's threshold is its own median
    plus the pooled threshold times its own spread. It assumes the devices' score tails differ in location
    and scale, not in shape: true of one model kind fitted on each of many similar devices, less so of a
    fleet of unlike machines (a device whose tail is heavier than the rest's gets more than the target).
    A device without spread (constant scores) keeps its own threshold.
    """
    located: dict[str, tuple[float, float, np.ndarray]] = {}
    for device, fitted in fits:
        held = fitted.held_out[np.isfinite(fitted.held_out)]
        centre = float(np.median(held))
        spread = float(np.quantile(held, 0.9)) - centre
        if spread > 0:
            located[device] = (centre, spread, (held - centre) / spread)
    pooled = calibrate(np.concatenate([z for _, _, z in located.values()]), target_far)
    thresholds = {device: fitted.calibration.threshold for device, fitted in fits}
    calibrations = {device: fitted.calibration for device, fitted in fits}
    for device, (centre, spread, normalised) in located.items():
        thresholds[device] = centre + pooled.threshold * spread
        rate = float((normalised > pooled.threshold).mean())
        samples = len(normalised)
        calibrations[device] = replace(pooled, threshold=thresholds[device], samples=samples, held_back_rate=rate)
    return PooledTails(thresholds, pooled, calibrations)


def run_all(job: FitJob, rows: list[Rows], jobs: int = 1, cluster: str | None = None) -> list[Fitted]:
    """``job.run`` on each entry of ``rows``, in this process (``jobs=1``), in ``jobs`` worker processes
    (-1: one per core), or on the workers of the Dask scheduler at ``cluster`` (``tcp://host:port``)."""
    if cluster is None and (jobs == 1 or len(rows) < 2):
        return [job.run(r) for r in rows]
    with _backend(cluster):
        return list(Parallel(n_jobs=-1 if cluster else jobs)(delayed(job.run)(r) for r in rows))


@contextlib.contextmanager
def _backend(cluster: str | None) -> Iterator[None]:
    """joblib's process pool, or its Dask backend on a client of the scheduler at ``cluster``."""
    if cluster is None:
        with parallel_config(backend="loky"):
            yield
        return
    from dask.distributed import Client  # here: importing it costs a second that local fits need not pay

    try:
        client = Client(cluster, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from exc
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        logger.info("fitting on the Dask cluster at %s (%d workers)", cluster, workers)
        with parallel_config(backend="dask", client=client):  # type: ignore[call-arg]
            yield
    finally:
        client.close()
