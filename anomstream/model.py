"""The anomaly model: features + detector(s) + calibrated threshold(s), global or per device.

``AnomalyModel.fit`` builds a ``FeaturePipeline`` and fits a detector on the training rows. With
``per_device=True`` every device seen in training gets its own standardisation, detector and threshold,
fitted on that device's rows alone (so a device's detector is the same whether it was trained alone or with
a fleet; its threshold shares the fleet's tail estimate, ``ModelConfig.pooled_tail``); scoring routes a
reading to its device's detector and falls back to the global one, which is always fitted too (on all
devices' rows), for devices unseen in training or whose own detector is not worth it
(:mod:`anomstream.fitting`).

Thresholds are calibrated on held-back normal data from the training range: each device's training rows are
cut into ``calibration_folds`` consecutive blocks, each block is scored by a detector fitted on the others,
and the threshold is set so that a fraction ``target_far`` of those out-of-fold scores lies above it
(:mod:`anomstream.calibration`: an empirical quantile where they suffice, a peaks-over-threshold tail fit
where they do not); the served detector is fitted on all the rows. Evaluation labels are never used. Why
and what it cannot promise: ``docs/alarms.md``.

A reading whose score depends on readings that do not exist (a device's first ``warm_up`` readings: partial
rolling windows, smoothing or hold reaching before the device's first reading) is scored but never flagged
(``ScoreResult.warming_up``).

Scores are post-processed causally per device: a trailing mean over the last ``smoothing`` readings (noise
reduction), then a trailing maximum over the last ``hold`` readings (an alarm off-delay, as alarm
management practice (ISA-18.2) recommends against chattering: an alarm stays up ``hold - 1`` readings after
the evidence fades, which also bridges short dips inside a long anomaly). Both are part of the model, and
of its ``context``, so that the streaming scorer applies them exactly as offline evaluation does.

``score(batch)`` expects the scorer's history rows (the last ``context`` readings of each
device) followed by the new rows, and returns results for every row given; results of history rows are
for the caller to drop.

Persistence writes JSON, ``.npz`` arrays and (for the autoencoders) torch state dicts: no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomstream.calibration import Calibration
from anomstream.detectors import Detector, DetectorBank, detector_class
from anomstream.detectors.base import groups
from anomstream.errors import ModelError, ModelIntegrityError
from anomstream.features import (
    BlockSums,
    FeaturePipeline,
    FeatureSpec,
    Windows,
    device_positions,
    trailing_max,
)
from anomstream.fitting import MIN_FIT_ROWS, FitJob, Fitted, Rows, pool_tails, postprocess, run_all, worse_than_global
from anomstream.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

MANIFEST = "model.json"
BANK_FOLDER = "devices"
# 2: per-device detectors in one bank (``devices/``, entries with ``bank_row``); 1: one folder per device.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
# One normal reading in a thousand may be flagged: with the 20-reading alarm hold, about one false alarm per
# 20,000 readings (5.5 hours at 1 Hz), the order of what alarm-management practice (ISA-18.2) asks of a loop.
DEFAULT_TARGET_FAR = 0.001
_LEGACY_KEYS = frozenset({"quantile", "margin"})  # calibration settings of format-1 models before target_far


@dataclass(frozen=True)
class ModelConfig:
    """Feature, smoothing and calibration settings around a detector.

    Attributes:
        rolling: trailing readings per device for rolling mean/spread features (0: none).
        rolling_stats: which rolling statistics (``"mean"``, ``"std"``).
        raw: include the standardised reading itself.
        window: consecutive feature rows per sample (sequence detectors), 1 for point detectors.
        standardise: standardise with training statistics.
        detrend_persistent: monitor persistent (drifting) channels through their recent change rather than
            their level (see ``anomstream.features``).
        baseline: readings in the slow per-device baseline the other channels' levels are measured against
            (0: against the training statistics; see ``anomstream.features``).
        smoothing: trailing readings the score is averaged over (1: no smoothing).
        hold: trailing readings the smoothed score is maximised over (1: no hold).
        validation_fraction: with ``calibration_folds=1``, the tail fraction of each device's training rows
            held back for calibration (the most recent normal data).
        calibration_folds: consecutive blocks each device's training rows are cut into; every block's scores
            come from a detector fitted on the other blocks (out-of-fold), and the threshold is calibrated on
            all of them, so that it sees how the detector scores a stretch of time it was not fitted on, as
            it will in service; the served detector is then fitted on all rows. 1: fit on the first rows and
            calibrate on the last ``validation_fraction``.
        target_far: fraction of normal readings the threshold may flag (per reading, after smoothing and
            hold).
        min_device_rows: with ``per_device``, fewest training readings a device needs for a detector of its
            own (fewer: the global one scores it). 100 readings hold five alarm-hold spans of 20: fewer
            leave a device's threshold to chance (50-reading device models flagged 27.5 % of a fleet's
            normal readings).
        pooled_tail: with ``per_device``, the devices' thresholds share one tail estimate
            (:func:`anomstream.fitting.pool_tails`): a 0.1 % tail cannot be estimated from one device's
            1,000 held-back scores, but from a fleet's it can.
    """

    rolling: int = 0
    rolling_stats: tuple[str, ...] = ("mean", "std")
    raw: bool = True
    window: int = 1
    standardise: bool = True
    detrend_persistent: bool = False
    baseline: int = 0
    smoothing: int = 1
    hold: int = 1
    validation_fraction: float = 0.2
    calibration_folds: int = 5
    target_far: float = DEFAULT_TARGET_FAR
    min_device_rows: int = 100
    pooled_tail: bool = True

    def __post_init__(self) -> None:
        windows_ok = self.smoothing >= 1 and self.hold >= 1
        windows_ok = windows_ok and self.calibration_folds >= 1 and self.baseline >= 0 and self.min_device_rows >= 1
        if not windows_ok or not 0.0 < self.validation_fraction < 1.0 or not 0.0 < self.target_far < 0.5:
            raise ModelError(
                f"invalid model config: smoothing={self.smoothing}, hold={self.hold}, "
                f"calibration_folds={self.calibration_folds} (>= 1), baseline={self.baseline} (>= 0), "
                f"min_device_rows={self.min_device_rows} (>= 1), "
                f"validation_fraction={self.validation_fraction} (in (0, 1)), "
                f"target_far={self.target_far} (in (0, 0.5))"
            )

    @property
    def score_reach(self) -> int:
        """Previous readings a smoothed, held score reaches back beyond the reading's features."""
        return self.smoothing - 1 + self.hold - 1

    def feature_spec(self, channels: tuple[str, ...]) -> FeatureSpec:
        """The feature spec these settings describe for ``channels``."""
        return FeatureSpec(
            channels=channels,
            standardise=self.standardise,
            raw=self.raw,
            rolling=self.rolling,
            rolling_stats=self.rolling_stats,
            window=self.window,
            detrend_persistent=self.detrend_persistent,
            baseline=self.baseline,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["rolling_stats"] = list(self.rolling_stats)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict`` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in _LEGACY_KEYS}  # older models: their thresholds are stored
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(d)
        if "rolling_stats" in values:
            values["rolling_stats"] = tuple(values["rolling_stats"])
        return cls(**values)


# One configuration per detector, used for every data set. Shared features: per device, the trailing mean and
# spread of the last 10 readings of every channel; persistent channels detrended, the other channels' levels
# taken against the median of their last 1,000 readings (a fault shorter than 500 readings never becomes the
# baseline, a drift slower than that does), all standardised on the training rows; scores averaged over 5
# readings (noise) and held for 20 (alarm off-delay); thresholds for the default false-alarm rate, from
# out-of-fold scores over 5 blocks of the training rows. Figures: bench/quality.py.
_SHARED = ModelConfig(
    rolling=10,
    rolling_stats=("mean", "std"),
    raw=False,
    detrend_persistent=True,
    baseline=1000,
    smoothing=5,
    hold=20,
)
DEFAULT_CONFIGS: dict[str, ModelConfig] = {
    "iforest": _SHARED,
    "pca": _SHARED,
    "dense-ae": _SHARED,
    "conv-ae": replace(_SHARED, window=32),
}
DEFAULT_DETECTOR_PARAMS: dict[str, dict[str, Any]] = {
    "iforest": {},
    "pca": {},
    "dense-ae": {"progress": False},
    "conv-ae": {"progress": False},
}


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a batch, one entry per row.

    Attributes:
        score: ``(n,)`` anomaly score after smoothing and hold; higher is more anomalous. NaN for rows with a
            ``known_raw`` score that no scored row's smoothing or hold reaches (history: inputs only).
        threshold: ``(n,)`` the threshold that applies to the row's device (NaN where ``score`` is).
        flagged: ``(n,)`` ``score > threshold``.
        contributions: ``(n, C)`` share of each raw channel in the row's detector score (rows sum to 1);
            computed for flagged rows only unless asked for all (other rows are 0).
        raw_score: ``(n,)`` detector score before smoothing and hold.
        warming_up: ``(n,)`` the score depends on readings before the device's first one (never flagged).
        own_model: ``(n,)`` the device's own detector scored the row (else the global one).
        expected: ``(n, C)`` per channel, the level the reading was judged against, in the channel's units
            (:meth:`FeaturePipeline.transform_with_reference`): the baseline, or the training mean; NaN for
            history rows, and empty with ``explain="none"``.
    """

    score: np.ndarray
    threshold: np.ndarray
    flagged: np.ndarray
    contributions: np.ndarray
    raw_score: np.ndarray
    warming_up: np.ndarray
    own_model: np.ndarray
    expected: np.ndarray


class AnomalyModel:
    """A fitted feature pipeline, global detector and optional per-device detectors, with thresholds.

    Build one with ``AnomalyModel.fit`` or ``AnomalyModel.load``.
    """

    def __init__(
        self,
        detector_name: str,
        config: ModelConfig,
        detector_params: dict[str, Any],
        pipeline: FeaturePipeline,
        global_detector: Detector,
        global_threshold: float,
        device_detectors: dict[str, Detector],
        device_thresholds: dict[str, float],
        seed: int,
        calibration: dict[str, Any] | None = None,
        bank: DetectorBank | None = None,
    ) -> None:
        self.detector_name = detector_name
        self.config = config
        self.detector_params = detector_params
        self.pipeline = pipeline
        self.global_detector = global_detector
        self.global_threshold = global_threshold
        self.device_detectors = device_detectors
        self.device_thresholds = device_thresholds
        self.seed = seed
        self.calibration = calibration or {}
        self._bank = bank  # the per-device detectors other than the global one, in device_detectors order
        self._plan: _Plan | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        """Raw channels the model reads, in order."""
        return self.pipeline.spec.channels

    @property
    def context(self) -> int:
        """Previous readings per device a score depends on (features plus score smoothing)."""
        return self.pipeline.context + self.config.score_reach

    @property
    def warm_up(self) -> int:
        """A device's first readings that are scored but never flagged: their features, smoothing or hold
        reach before the device's first reading."""
        return self.pipeline.warm_up + self.config.score_reach

    @property
    def baseline_step(self) -> int:
        """Readings per block of the slow baseline; 0 when the model has none."""
        spec = self.pipeline.spec
        return spec.baseline_step if spec.baseline else 0

    @property
    def per_device(self) -> bool:
        """Whether devices seen in training have their own detectors."""
        return bool(self.device_detectors)

    @classmethod
    def fit(
        cls,
        batch: TelemetryBatch,
        detector: str = "iforest",
        per_device: bool = False,
        seed: int = 0,
        params: dict[str, Any] | None = None,
        jobs: int = 1,
        cluster: str | None = None,
    ) -> AnomalyModel:
        """Fit features, detector(s) and thresholds on normal training rows.

        Args:
            batch: training rows of one or many devices (each device's rows in ``seq`` order).
            detector: detector name (``iforest``, ``pca``, ``dense-ae``, ``conv-ae``).
            per_device: also fit one detector per device on that device's rows.
            seed: random seed; the same data and seed give the same model and scores.
            params: overrides: keys of ``ModelConfig`` change the features, smoothing or calibration, any
                other key is a detector hyper-parameter. Defaults: ``DEFAULT_CONFIGS[detector]`` and
                ``DEFAULT_DETECTOR_PARAMS[detector]``.
            jobs: worker processes for the per-device fits (-1: one per core); the same models either way.
            cluster: a Dask scheduler's address: the per-device fits run on its workers instead.

        Raises:
            ModelError: unknown detector or parameter, or too few training rows.
        """
        detector_class(detector)  # unknown names fail before any work
        config, detector_params = _split_params(detector, params or {})
        pipeline = FeaturePipeline(config.feature_spec(batch.channels)).fit(batch, per_device=per_device)
        features = pipeline.transform(batch)
        position, count = device_positions(batch.device_id)
        # Warm-up rows (partial feature windows) neither fit nor calibrate; nor do rows whose smoothing or
        # hold window reaches back into warm-up rows.
        usable = position >= np.minimum(pipeline.warm_up, count // 4)
        calibratable = position >= np.minimum(pipeline.warm_up + config.score_reach, count // 4)
        is_validation = position >= count - np.floor(count * config.validation_fraction)
        fit_rows, validation_rows = usable & ~is_validation, calibratable & is_validation
        if fit_rows.sum() < MIN_FIT_ROWS or validation_rows.sum() < 1:
            raise ModelError(
                f"{len(batch)} training rows leave {int(fit_rows.sum())} to fit and "
                f"{int(validation_rows.sum())} to calibrate: give the trainer more training records"
            )

        folds = config.calibration_folds
        fold = np.minimum(folds - 1, (folds * position) // np.maximum(count, 1))
        rows = Rows(features, batch.device_id, usable, calibratable, fold, fit_rows, validation_rows)
        job = FitJob(detector, detector_params, config, seed)
        fitted_global = job.run(rows)
        global_detector, global_threshold = fitted_global.detector, fitted_global.calibration.threshold
        calibrations = [fitted_global.calibration]
        device_detectors: dict[str, Detector] = {}
        device_thresholds: dict[str, float] = {}
        on_global = {"too_few_rows": 0, "worse_than_global": 0}
        kept: list[tuple[str, Fitted]] = []
        pooled_summary: dict[str, Any] | None = None
        if per_device:
            codes, devices = pd.factorize(batch.device_id)
            device_groups = groups(codes)
            if len(devices) == 1:
                # Same rows, same seed: the device's detector would be the global one again.
                only = str(devices[0])
                device_detectors[only], device_thresholds[only] = global_detector, global_threshold
                device_groups = []
            enough = [
                (code, index)
                for code, index in device_groups
                if count[index[0]] >= config.min_device_rows and fit_rows[index].sum() >= MIN_FIT_ROWS
            ]
            on_global["too_few_rows"] = len(device_groups) - len(enough)
            fits = run_all(job, [rows.take(index) for _, index in enough], jobs, cluster)
            for (code, index), own in zip(enough, fits, strict=True):
                global_held_out = fitted_global.held_out[index]
                target = config.target_far
                if folds > 1 and worse_than_global(own, global_held_out, global_threshold, fold[index], target):
                    on_global["worse_than_global"] += 1
                    continue
                kept.append((str(devices[code]), own))
            own_calibrations = {device: own.calibration for device, own in kept}
            if config.pooled_tail and len(kept) >= 2:
                pooled = pool_tails(kept, config.target_far)
                own_calibrations, pooled_summary = pooled.calibrations, pooled.calibration.to_dict()
            for device, own in kept:
                device_detectors[device] = own.detector
                device_thresholds[device] = own.detector.threshold_ = own_calibrations[device].threshold
            calibrations += own_calibrations.values()
            if on_global["too_few_rows"] or on_global["worse_than_global"]:
                logger.info(
                    "%d devices score with the global detector: %d with fewer than %d training rows, %d whose own "
                    "detector flagged more held-back readings than the global one",
                    sum(on_global.values()),
                    on_global["too_few_rows"],
                    config.min_device_rows,
                    on_global["worse_than_global"],
                )
        logger.info(
            "fitted %s on %d rows (%d devices with their own detector), threshold %.6g",
            detector,
            len(batch),
            len(device_detectors),
            global_threshold,
        )
        summary = _calibration_summary(calibrations, config.target_far)
        if per_device:
            summary["devices_on_global"] = on_global
        if pooled_summary is not None:
            summary["pooled_tail"] = pooled_summary
        return cls(
            detector,
            config,
            detector_params,
            pipeline,
            global_detector,
            global_threshold,
            device_detectors,
            device_thresholds,
            seed,
            summary,
        )

    def score(
        self,
        batch: TelemetryBatch,
        explain: str = "flagged",
        known_raw: np.ndarray | None = None,
        baseline: BlockSums | None = None,
    ) -> ScoreResult:
        """Score every row of ``batch`` (history rows first, then new rows).

        Args:
            batch: rows of one or many devices, each device's rows in ``seq`` order.
            explain: compute channel contributions for ``"flagged"`` rows (those without a ``known_raw``
                score), ``"all"`` rows or ``"none"``.
            known_raw: ``(n,)`` detector scores already known (``ScoreResult.raw_score`` of an earlier
                call), NaN where not: those rows skip the detector. The streaming scorer passes its history
                rows' scores so that each reading goes through the detector once, however many batches it
                stays in history.
            baseline: the slow baseline's blocks of earlier readings (the streaming scorer's
                :class:`~anomstream.features.BlockSums`; rows of ``batch`` already summed in them are not
                added again); without them, the blocks come from ``batch`` alone.
        """
        if explain not in ("flagged", "all", "none"):
            raise ModelError(f"explain={explain!r}: use 'flagged', 'all' or 'none'")
        n = len(batch)
        raw = np.full(n, np.nan) if known_raw is None else np.array(known_raw, dtype=np.float64)
        unknown = np.isnan(raw)
        explained = {"flagged": None, "all": np.ones(n, bool), "none": np.zeros(n, bool)}[explain]
        # Devices as integer codes: every per-device pass below groups them, and ints hash far faster.
        device, devices = pd.factorize(batch.device_id)
        # Rows whose features are used: those the detector scores, and the rows in their windows.
        needed = np.ones(n, bool) if explain == "all" else unknown
        if self.config.window > 1:
            needed = _reach_back(needed, device, self.config.window - 1)
        features, expected = self.pipeline.transform_with_reference(batch, needed, baseline, explain != "none")
        # Rows whose smoothed, held scores are asked for: those the detector scores and, in "all", every row;
        # the others (history) are inputs to them only.
        wanted = np.ones(n, bool) if explain == "all" else unknown
        live = np.flatnonzero(_reach_back(wanted, device, self.config.score_reach))
        live_device = device[live]
        plan = self._scoring_plan()
        route = plan.route(devices)[live_device]
        threshold = np.full(n, np.nan)
        threshold[live] = plan.thresholds[route]
        own_model = np.zeros(n, bool)
        own_model[live] = route > 0
        bank_row = plan.bank_rows[route]  # -1: the global detector scores the row
        todo = unknown[live]
        on_global = live[todo & (bank_row < 0)]
        # Windows (conv-ae) reach the detector as they are; other detectors would see them via np.asarray.
        if n and len(on_global) == n:  # the usual batch of one global model: no copy of the features
            raw[:] = self.global_detector.score(features)  # type: ignore[arg-type]
        elif len(on_global):
            raw[on_global] = self.global_detector.score(features[on_global])
        on_bank = todo & (bank_row >= 0)
        if on_bank.any() and plan.bank is not None:
            raw[live[on_bank]] = plan.bank.score(features[live[on_bank]], bank_row[on_bank])
        score = np.full(n, np.nan)
        score[live] = postprocess(raw[live], live_device, self.config.smoothing, self.config.hold)
        warming_up = device_positions(device)[0] < self.warm_up
        flagged = (score > threshold) & ~warming_up
        if explained is None:
            explained = flagged & unknown  # rows with known scores are the caller's history: not explained
        contributions = np.zeros((n, len(self.channels)))
        explained_live = np.flatnonzero(explained[live])
        if len(explained_live):
            rows, rows_bank = live[explained_live], bank_row[explained_live]
            contributions[rows] = self._channel_shares(self._per_feature(features, rows, rows_bank, plan.bank))
        return ScoreResult(score, threshold, flagged, contributions, raw, warming_up, own_model, expected)

    def save(self, directory: str | Path) -> list[str]:
        """Write the model into ``directory``; return the files written, relative to it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [f"global/{name}" for name in self.global_detector.save(directory / "global")]
        plan = self._scoring_plan()
        if plan.bank is not None:
            written += [f"{BANK_FOLDER}/{name}" for name in plan.bank.save(directory / BANK_FOLDER)]
        devices: dict[str, dict[str, Any]] = {}
        for i, device in enumerate(self.device_detectors):
            row = int(plan.bank_rows[i + 1])
            place: dict[str, Any] = {"folder": "global"} if row < 0 else {"bank_row": row}
            devices[device] = place | {"threshold": self.device_thresholds[device]}
        manifest = {
            "format_version": FORMAT_VERSION,
            "detector": self.detector_name,
            "detector_params": self.detector_params,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "features": self.pipeline.to_dict(),
            "global_threshold": self.global_threshold,
            "calibration": self.calibration,
            "devices": devices,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return [MANIFEST, *written]

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> AnomalyModel:
        """Read a model written by ``save``; detectors score on ``device`` (``cpu`` or ``cuda``).

        Raises:
            ModelIntegrityError: the manifest is missing, unreadable or of another format version.
        """
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"cannot read {directory / MANIFEST}: {exc}") from exc
        if manifest.get("format_version") not in READABLE_FORMATS:
            raise ModelIntegrityError(
                f"{directory / MANIFEST} has format version {manifest.get('format_version')}, this "
                f"anomstream reads {' and '.join(map(str, READABLE_FORMATS))}: retrain the model or upgrade"
            )
        try:
            cls_ = detector_class(manifest["detector"])
            global_detector = cls_.load(directory / "global", device=device)
            entries = manifest["devices"]
            bank = None
            if any("bank_row" in e for e in entries.values()):
                bank = cls_.load_bank(directory / BANK_FOLDER, device=device)
            loaded: dict[str, Detector] = {"global": global_detector}
            for entry in entries.values():  # format 1: a folder per device
                if "bank_row" not in entry and entry["folder"] not in loaded:
                    loaded[entry["folder"]] = cls_.load(_inside(directory, entry["folder"]), device=device)
            detectors = {
                d: bank.detectors[int(e["bank_row"])] if bank is not None and "bank_row" in e else loaded[e["folder"]]
                for d, e in entries.items()
            }
            if bank is not None and [id(d) for d in detectors.values() if d is not global_detector] != [
                id(d) for d in bank.detectors
            ]:
                raise ModelIntegrityError(f"{directory / MANIFEST}: its devices do not map one to one onto the bank")
            return cls(
                manifest["detector"],
                ModelConfig.from_dict(manifest["config"]),
                manifest["detector_params"],
                FeaturePipeline.from_dict(manifest["features"]),
                global_detector,
                float(manifest["global_threshold"]),
                detectors,
                {d: float(e["threshold"]) for d, e in entries.items()},
                int(manifest["seed"]),
                dict(manifest.get("calibration", {})),
                bank,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelIntegrityError(f"{directory / MANIFEST} is incomplete or malformed: {exc!r}") from exc

    def _scoring_plan(self) -> _Plan:
        """Routing and thresholds per device, and the bank of the per-device detectors (built once)."""
        if self._plan is None:
            own = [d for d, detector in self.device_detectors.items() if detector is not self.global_detector]
            if self._bank is None and own:
                self._bank = detector_class(self.detector_name).bank([self.device_detectors[d] for d in own])
            row = {d: i for i, d in enumerate(own)}
            self._plan = _Plan(
                {d: i + 1 for i, d in enumerate(self.device_detectors)},
                np.array([self.global_threshold, *(self.device_thresholds[d] for d in self.device_detectors)]),
                np.array([-1, *(row.get(d, -1) for d in self.device_detectors)], dtype=np.int64),
                self._bank,
            )
        return self._plan

    def _per_feature(
        self, features: np.ndarray | Windows, rows: np.ndarray, bank_row: np.ndarray, bank: DetectorBank | None
    ) -> np.ndarray:
        """Per-feature contributions of ``rows``, by the global detector where ``bank_row`` is -1."""
        on_global = bank_row < 0
        computed = []
        if on_global.any():
            computed.append((on_global, self.global_detector.contributions(features[rows[on_global]])))
        if bank is not None and (~on_global).any():
            computed.append((~on_global, bank.contributions(features[rows[~on_global]], bank_row[~on_global])))
        parts = np.zeros((len(rows), computed[0][1].shape[1]))
        for mask, own in computed:
            parts[mask] = own
        return parts

    def _channel_shares(self, per_feature: np.ndarray) -> np.ndarray:
        """Per-feature contributions summed per raw channel and normalised to sum 1 per row."""
        per_feature = np.maximum(per_feature, 0.0)
        n_channels = len(self.channels)
        per_channel = np.zeros((len(per_feature), n_channels))
        for feature, channel in enumerate(self.pipeline.feature_channel):
            per_channel[:, channel] += per_feature[:, feature]
        total = per_channel.sum(axis=1, keepdims=True)
        uniform = np.full_like(per_channel, 1.0 / n_channels)  # nothing to attribute: no channel stands out
        return np.where(total > 0, per_channel / np.where(total > 0, total, 1.0), uniform)


@dataclass(frozen=True)
class _Plan:
    """How ``score`` routes rows: index 0 is the global detector, ``i + 1`` the i-th device of
    ``device_detectors``; ``bank_rows[index]`` is that detector's row in ``bank`` (-1: the global one)."""

    index: dict[str, int]
    thresholds: np.ndarray
    bank_rows: np.ndarray
    bank: DetectorBank | None

    def route(self, device_ids: Any) -> np.ndarray:
        """Per device of ``device_ids``, its index."""
        return np.array([self.index.get(str(d), 0) for d in device_ids], dtype=np.int64)


def _inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, refused when it leads outside ``directory`` (a crafted manifest's ``../``
    or absolute path would load files no checksum covers)."""
    path = directory / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(directory.resolve()):
        raise ModelIntegrityError(f"{directory / MANIFEST} names device folder {relative!r}, outside the model")
    return path


def _split_params(detector: str, params: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    """Defaults for ``detector`` overridden by ``params``: config keys and detector hyper-parameters."""
    config_keys = {f.name for f in fields(ModelConfig)}
    overrides = {k: v for k, v in params.items() if k in config_keys}
    if "rolling_stats" in overrides:
        overrides["rolling_stats"] = tuple(overrides["rolling_stats"])
    config = replace(DEFAULT_CONFIGS.get(detector, ModelConfig()), **overrides)
    detector_params = {**DEFAULT_DETECTOR_PARAMS.get(detector, {})}
    detector_params.update({k: v for k, v in params.items() if k not in config_keys})
    return config, detector_params


def _reach_back(wanted: np.ndarray, device_id: np.ndarray, reach: int) -> np.ndarray:
    """Rows that are ``wanted`` or within ``reach`` readings before a wanted row of the same device."""
    if wanted.all():
        return wanted
    return trailing_max(wanted[::-1].astype(np.float64), device_id[::-1], reach + 1)[::-1] > 0  # type: ignore[no-any-return]


def _calibration_summary(calibrations: list[Calibration], target_far: float) -> dict[str, Any]:
    """The global detector's calibration (first) and, over all detectors, the held-back flag rates."""
    rates = np.array([c.held_back_rate for c in calibrations])
    methods = sorted({c.method for c in calibrations})
    return {
        "target_far": target_far,
        "global": calibrations[0].to_dict(),
        "detectors": len(calibrations),
        "methods": methods,
        "held_back_rate_mean": float(rates.mean()),
        "held_back_rate_max": float(rates.max()),
    }
