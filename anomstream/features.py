"""Feature building: one code path for training and scoring (no train/serve skew).

A ``FeatureSpec`` says which features a model uses; a ``FeaturePipeline`` holds the statistics fitted on the
training rows and turns any ``TelemetryBatch`` into a feature array:

- the reading itself, standardised with the training mean and spread of each channel (a missing value is
  replaced by the trailing mean of its channel, or by the training mean when no recent value exists);
- optionally rolling statistics per device over the last ``rolling`` readings (trailing mean and spread);
- optionally (``detrend_persistent``) levels of persistent channels taken relative to their own recent past:
  a channel whose training readings stay correlated ``rolling // 2`` readings apart (autocorrelation above
  ``PERSISTENCE_CUTOFF``: a temperature that drifts with the ambient, say) wanders beyond any short
  training period, so its level says little; such a channel is monitored through its change since the
  window that ended ``rolling`` readings earlier, as an integrated series is differenced before it is
  charted. Noisy, stationary channels (flow, vibration, current) keep their levels;
- optionally (``baseline``) the levels of the other channels taken relative to their own slow baseline: the
  median of the means of ``BASELINE_SAMPLES`` blocks of readings spanning the ``baseline`` readings before
  the current rolling window (a streaming scorer keeps the blocks as :class:`BlockSums`). A level
  that drifts slowly (ambient temperature, load growth, a sensor ageing) is then judged against the device's
  recent behaviour rather than against the training period, while a fault shorter than half the baseline
  never moves it;
- optionally a final standardisation of every feature with its training mean and spread;
- optionally sliding windows of ``window`` consecutive feature rows per device, ``(n, W, F)``, for sequence
  models.

Every feature is causal: it depends on the reading and on at most ``context`` previous readings of the same
device. A device's first readings use what exists (partial rolling windows, sliding windows padded with the
first row). A streaming scorer that keeps the last ``context`` readings of each device (or the last
``warm_up`` and the slow baseline's :class:`BlockSums`), prepends them to a batch and drops them after,
therefore gets exactly (bit for bit) the features that an offline pass over
the whole sequence computes: trailing sums are accumulated in the same order whatever the batch boundaries,
instead of by differences of cumulative sums, whose rounding would depend on where a batch starts.

Rows of many devices may be interleaved; each device's rows must be in ``seq`` order. Grouping is
vectorised (hash factorisation + stable argsort); there is no Python loop over records.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Self

import numpy as np
import pandas as pd

from anomstream.errors import ModelError
from anomstream.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

ROLLING_STATS = ("mean", "std")
PERSISTENCE_CUTOFF = 0.5  # autocorrelation at lag rolling // 2 above which a channel counts as persistent
_MIN_SCALE = 1e-6  # a channel that never moved in training gets this spread floor, relative to its level


@dataclass(frozen=True)
class FeatureSpec:
    """Which features a model is built on.

    Attributes:
        channels: raw channel names, in the order the features use them.
        standardise: standardise features with the mean and spread of the training rows.
        raw: include each (standardised) reading itself.
        rolling: trailing readings per device for rolling statistics; 0 for none.
        rolling_stats: which rolling statistics, out of ``"mean"`` and ``"std"``.
        window: consecutive feature rows per device in one sample, for sequence models; 1 for point features.
        detrend_persistent: measure the level of persistent channels against their own recent past (needs
            ``rolling``; see the module docstring).
        baseline: readings in the slow baseline the other channels' levels are measured against (needs
            ``rolling``); 0 measures levels against the training statistics.
    """

    channels: tuple[str, ...]
    standardise: bool = True
    raw: bool = True
    rolling: int = 0
    rolling_stats: tuple[str, ...] = ROLLING_STATS
    window: int = 1
    detrend_persistent: bool = False
    baseline: int = 0

    def __post_init__(self) -> None:
        if not self.channels:
            raise ModelError("FeatureSpec needs at least one channel")
        if self.rolling < 0 or self.window < 1:
            raise ModelError(f"FeatureSpec rolling={self.rolling} must be >= 0 and window={self.window} >= 1")
        unknown = set(self.rolling_stats) - set(ROLLING_STATS)
        if unknown:
            raise ModelError(f"FeatureSpec rolling_stats {sorted(unknown)} unknown; use {ROLLING_STATS}")
        if self.baseline < 0 or (self.baseline and self.rolling < 2):
            raise ModelError(f"FeatureSpec baseline={self.baseline} must be >= 0 and needs rolling >= 2")
        if self.detrend_persistent and self.rolling < 2:
            raise ModelError("FeatureSpec detrend_persistent needs rolling >= 2 (the detrending horizon)")
        if not self.raw and not (self.rolling and self.rolling_stats):
            raise ModelError("FeatureSpec builds no feature: set raw=True or rolling > 0 with rolling_stats")

    @property
    def context(self) -> int:
        """Previous readings of the same device that a reading's features depend on."""
        reach = self.point_reach
        if self.baseline:
            # the first reading of the oldest baseline block (see `FeaturePipeline._slow_baseline`)
            reach = max(reach, self.rolling - 2 + (BASELINE_SAMPLES + 1) * self.baseline_step)
        return reach + self.window - 1

    @property
    def point_reach(self) -> int:
        """Previous readings a row's point features need, the slow baseline aside."""
        return 2 * self.rolling - 1 if self.detrend_persistent else max(self.rolling - 1, 0)

    @property
    def baseline_step(self) -> int:
        """Readings per block of the slow baseline: it takes the median of ``BASELINE_SAMPLES`` blocks."""
        return max(1, self.baseline // BASELINE_SAMPLES)

    @property
    def warm_up(self) -> int:
        """Previous readings a reading needs for complete features: ``context`` except the slow baseline, which
        takes the median of the blocks that exist. Also the readings a streaming scorer keeps per device as
        rows: it keeps the slow baseline's blocks as :class:`BlockSums`."""
        return replace(self, baseline=0).context

    @property
    def blocks(self) -> tuple[str, ...]:
        """Feature blocks in output order, each one feature per channel."""
        rolling = tuple(f"rolling_{s}" for s in ROLLING_STATS if self.rolling and s in self.rolling_stats)
        return (("raw",) if self.raw else ()) + rolling

    @property
    def feature_names(self) -> tuple[str, ...]:
        """One name per feature, ``"<block>:<channel>"``."""
        return tuple(f"{block}:{channel}" for block in self.blocks for channel in self.channels)

    @property
    def feature_channel(self) -> np.ndarray:
        """``(F,)`` index of the raw channel each feature is built from."""
        return np.tile(np.arange(len(self.channels)), len(self.blocks))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["channels"], d["rolling_stats"] = list(self.channels), list(self.rolling_stats)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``."""
        return cls(
            channels=tuple(d["channels"]),
            standardise=bool(d.get("standardise", True)),
            raw=bool(d.get("raw", True)),
            rolling=int(d.get("rolling", 0)),
            rolling_stats=tuple(d.get("rolling_stats", ROLLING_STATS)),
            window=int(d.get("window", 1)),
            detrend_persistent=bool(d.get("detrend_persistent", False)),
            baseline=int(d.get("baseline", 0)),
        )


@dataclass(frozen=True)
class _Grouped:
    """Rows grouped by device (each device's rows together, in order): device, channel values ``(n, C)``,
    position within the device's rows, ``seq``, and the index of the scaling table that applies."""

    device: np.ndarray
    values: np.ndarray
    pos: np.ndarray
    seq: np.ndarray
    table: np.ndarray


@dataclass(frozen=True)
class _Scaling:
    """Centre and spread of the raw channels (C,) and of the point features (F,); persistent channels (C,)."""

    raw_center: np.ndarray
    raw_scale: np.ndarray
    feature_center: np.ndarray
    feature_scale: np.ndarray
    persistent: np.ndarray  # 1.0 where the channel is detrended, else 0.0

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> _Scaling:
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in cls.__dataclass_fields__})


class _Tables:
    """Scalings stacked per statistic, ``(T, C)`` or ``(T, F)``: row 0 the global one, then one per device."""

    def __init__(self, scalings: list[_Scaling]) -> None:
        self.count = len(scalings)
        self._stacked = {name: np.stack([getattr(t, name) for t in scalings]) for name in _Scaling.__dataclass_fields__}

    def per_row(self, name: str, row_table: np.ndarray) -> np.ndarray:
        """A statistic for every row: ``(C,)`` broadcastable when one table serves all rows, else ``(n, C)``."""
        stacked = self._stacked[name]
        return stacked[0] if self.count == 1 else stacked[row_table]


class Windows:
    """``(n, W, F)`` windows of feature rows, kept as the rows and an index instead of ``n x W`` copies.

    ``points`` is ``(m, F)`` float32, ``index`` ``(n, W)`` the rows of each window, oldest first. The sequence
    autoencoder gathers its windows chunk by chunk (on the GPU when it scores there, so only the rows and
    the index cross to the device, not ``W`` copies of each row); anything else that asks numpy for an array
    (``np.asarray``, a ufunc) gets the materialised ``(n, W, F)`` float32 array. Indexing with rows gives
    ``Windows`` of those rows; an integer gives that row's ``(W, F)`` window.
    """

    def __init__(self, points: np.ndarray, index: np.ndarray) -> None:
        self.points, self.index = points, index

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index), self.index.shape[1], self.points.shape[1])

    @property
    def ndim(self) -> int:
        return 3

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.points.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: Any) -> Any:
        if isinstance(rows, int | np.integer):
            return self.points[self.index[rows]]
        return Windows(self.points, self.index[rows])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        windows = self.points[self.index]
        return windows if dtype is None else windows.astype(dtype, copy=False)


class FeaturePipeline:
    """Fitted feature statistics plus the transform that uses them.

    With ``per_device=True`` at fit time every training device gets its own standardisation (so a device's
    features, and a per-device detector fitted on them, depend only on that device's training rows); devices
    not seen in training use the statistics of all training rows.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._global: _Scaling | None = None
        self._devices: dict[str, _Scaling] = {}
        self._lookup: tuple[_Tables, pd.Index] | None = None  # built on first use from the two above

    @property
    def context(self) -> int:
        """Previous readings of the same device a reading's features depend on."""
        return self.spec.context

    @property
    def warm_up(self) -> int:
        """Previous readings of the same device a reading needs for complete features."""
        return self.spec.warm_up

    @property
    def feature_channel(self) -> np.ndarray:
        """``(F,)`` raw channel index of each feature."""
        return self.spec.feature_channel

    @property
    def n_features(self) -> int:
        """Features per reading, ``F``."""
        return len(self.spec.feature_names)

    @property
    def devices(self) -> tuple[str, ...]:
        """Devices with their own standardisation."""
        return tuple(self._devices)

    def fit(self, batch: TelemetryBatch, per_device: bool = False) -> Self:
        """Fit the standardisation on training rows (global, and per device when asked)."""
        values = self._channel_values(batch)
        if len(batch) == 0:
            raise ModelError("cannot fit features on an empty batch: give the trainer some training rows")
        self._global = self._fit_scaling(batch, values)
        self._devices, self._lookup = {}, None
        if per_device:
            codes, uniques = pd.factorize(batch.device_id)
            order = np.argsort(codes, kind="stable")  # each device's rows, in their order, one slice each
            bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
            for code, device in enumerate(uniques):
                rows = order[bounds[code] : bounds[code + 1]]
                self._devices[str(device)] = self._fit_scaling(batch.take(rows), values[rows])
        return self

    def transform(
        self, batch: TelemetryBatch, needed: np.ndarray | None = None, baseline: BlockSums | None = None
    ) -> np.ndarray | Windows:
        """Features of every row: ``(n, F)`` float64, or ``(n, W, F)`` float32 :class:`Windows` when
        ``spec.window > 1``.

        ``needed`` (``(n,)`` bool, default all) marks the rows whose features will be used; the others are
        inputs only (a scorer's history rows whose scores are known): their features are left uncomputed
        (0) unless a needed row's point features reach them. A needed row's window rows must be needed too.
        ``baseline`` holds the slow baseline's blocks of readings before ``batch`` (a streaming scorer's
        :class:`BlockSums`); without it, the blocks come from ``batch`` alone.

        Windows feed the sequence autoencoder, which computes in float32 anyway; kept as float32 rows and an
        index, they are gathered only where and when the detector needs them.
        """
        return self.transform_with_reference(batch, needed, baseline, reference=False)[0]

    def transform_with_reference(
        self,
        batch: TelemetryBatch,
        needed: np.ndarray | None = None,
        baseline: BlockSums | None = None,
        reference: bool = True,
    ) -> tuple[np.ndarray | Windows, np.ndarray]:
        """``transform``, and per row and channel the level the reading was judged against, in the channel's
        own units: for a persistent channel its mean over the window that ended ``rolling`` readings earlier,
        for the others the slow baseline, or the training mean without one (``(n, C)``; NaN for rows not
        ``needed``, and empty without ``reference``). Beside the reading it says how far off, and which way.
        """
        if self._global is None:
            raise ModelError("FeaturePipeline.transform before fit: fit or load the pipeline first")
        values = self._channel_values(batch)
        if self._lookup is None:
            self._lookup = _Tables([self._global, *self._devices.values()]), pd.Index(list(self._devices), dtype=object)
        tables, devices = self._lookup
        order, pos, table_row = _group_rows(batch.device_id, devices)
        sorted_values = values[order]
        row_table = table_row[order]
        needed_sorted = None if needed is None else np.asarray(needed, dtype=bool)[order]
        grouped = _Grouped(batch.device_id[order], sorted_values, pos, batch.seq[order], row_table)
        levels = np.full(values.shape, np.nan) if reference else None
        points = self._point_features(grouped, tables, True, needed_sorted, baseline, levels)
        expected = np.empty((0, values.shape[1]))
        if levels is not None:
            expected = np.empty_like(levels)
            expected[order] = levels
        if self.spec.window > 1:
            in_row_order = np.empty_like(order)
            in_row_order[order] = np.arange(len(order))
            return Windows(points.astype(np.float32), _window_index(pos, self.spec.window)[in_row_order]), expected
        features = np.empty_like(points)
        features[order] = points
        return features, expected

    def fit_transform(self, batch: TelemetryBatch, per_device: bool = False) -> np.ndarray | Windows:
        """``fit`` then ``transform`` on the same rows."""
        return self.fit(batch, per_device=per_device).transform(batch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the spec and the fitted statistics."""
        if self._global is None:
            raise ModelError("cannot save an unfitted FeaturePipeline")
        return {
            "spec": self.spec.to_dict(),
            "global": self._global.to_dict(),
            "devices": {device: s.to_dict() for device, s in self._devices.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturePipeline:
        """Inverse of ``to_dict``."""
        pipeline = cls(FeatureSpec.from_dict(d["spec"]))
        pipeline._global = _Scaling.from_dict(d["global"])
        pipeline._devices = {device: _Scaling.from_dict(s) for device, s in d["devices"].items()}
        return pipeline

    def _channel_values(self, batch: TelemetryBatch) -> np.ndarray:
        try:
            columns = [batch.channels.index(c) for c in self.spec.channels]
        except ValueError as exc:
            raise ModelError(
                f"batch channels {batch.channels} lack one of the model's channels {self.spec.channels}"
            ) from exc
        return np.asarray(batch.values[:, columns], dtype=np.float64)

    def _fit_scaling(self, batch: TelemetryBatch, values: np.ndarray) -> _Scaling:
        """Statistics of one set of training rows (all devices, or one device)."""
        n_channels = values.shape[1]
        if self.spec.standardise:
            raw_center, raw_scale = _center_scale(values)
        else:
            raw_center, raw_scale = np.zeros(n_channels), np.ones(n_channels)
        n_features = self.n_features
        order, pos, table_row = _group_rows(batch.device_id)
        persistent = np.zeros(n_channels)
        if self.spec.detrend_persistent:
            z = (values[order] - raw_center) / raw_scale
            autocorr = _autocorrelation(z, pos, max(self.spec.rolling // 2, 1))
            persistent = (autocorr > PERSISTENCE_CUTOFF).astype(np.float64)
        identity = _Scaling(raw_center, raw_scale, np.zeros(n_features), np.ones(n_features), persistent)
        if not self.spec.standardise:
            return identity
        grouped = _Grouped(batch.device_id[order], values[order], pos, batch.seq[order], table_row[order])
        points = self._point_features(grouped, _Tables([identity]), final=False)
        feature_center, feature_scale = _center_scale(points)
        return _Scaling(raw_center, raw_scale, feature_center, feature_scale, persistent)

    def _point_features(
        self,
        rows: _Grouped,
        tables: _Tables,
        final: bool,
        needed: np.ndarray | None = None,
        baseline: BlockSums | None = None,
        reference: np.ndarray | None = None,
    ) -> np.ndarray:
        """Point features of device-grouped rows, ``(n, F)``; rows not ``needed`` (default: all are) are
        inputs only: left at 0, they cost one standardisation each, and the trailing statistics are computed at
        the needed rows alone. ``reference``, when given (``(n, C)``), receives each needed row's reference
        levels in raw units (see ``transform_with_reference``)."""
        values, pos, row_table = rows.values, rows.pos, rows.table
        n, rolling = len(values), self.spec.rolling
        points = np.zeros((n, self.n_features))
        out = np.arange(n) if needed is None else np.flatnonzero(needed)
        if not len(out):
            return points
        # the row whose trailing window ended `rolling` readings earlier: persistent channels' reference
        earlier_rows = out - np.minimum(pos[out], rolling) if self.spec.detrend_persistent else None
        z, mean, std, earlier = self._levels(values, pos, tables, row_table, None if needed is None else out,
                                             earlier_rows)  # fmt: skip
        width = z.shape[1]
        computed = {"raw": z, "rolling_mean": mean, "rolling_std": std}
        blocks = {block: array for block in self.spec.blocks if (array := computed[block]) is not None}
        out_table = row_table[out]
        persistent = tables.per_row("persistent", out_table) > 0.5
        judged_against = np.zeros((len(out), width))  # standardised: 0 is the training mean
        if earlier is not None:
            # Persistent channels: levels relative to the trailing mean of the window ending K readings ago.
            np.copyto(judged_against, earlier, where=persistent)
            for block in ("raw", "rolling_mean"):
                if block in blocks:
                    np.subtract(blocks[block], earlier, out=blocks[block], where=persistent)
        if self.spec.baseline and mean is not None:
            # Other channels: levels relative to the slow baseline of the readings before the window.
            slow = self._slow_baseline(rows, tables, out, baseline)
            np.copyto(judged_against, slow, where=~persistent)
            for block in ("raw", "rolling_mean"):
                if block in blocks:
                    np.subtract(blocks[block], slow, out=blocks[block], where=~persistent)
        if reference is not None:
            scale, center = tables.per_row("raw_scale", out_table), tables.per_row("raw_center", out_table)
            reference[out] = judged_against * scale + center
        sub = np.concatenate([blocks[block] for block in self.spec.blocks], axis=1)
        if final:
            sub -= tables.per_row("feature_center", out_table)
            sub /= tables.per_row("feature_scale", out_table)
        points[out] = sub
        return points

    def _levels(
        self,
        values: np.ndarray,
        pos: np.ndarray,
        tables: _Tables,
        row_table: np.ndarray,
        out: np.ndarray | None,
        earlier_rows: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """At the device-grouped rows ``out`` (None: all): standardised readings (a missing one replaced by
        its trailing mean, or 0 = the training mean) and, with ``rolling``, their trailing mean and spread;
        and the trailing mean at ``earlier_rows`` (None: not asked)."""
        z = values - tables.per_row("raw_center", row_table)
        z /= tables.per_row("raw_scale", row_table)
        missing = np.isnan(z)
        any_missing = bool(missing.any())
        z_out = z if out is None else z[out]
        if not self.spec.rolling:
            z_out[missing if out is None else missing[out]] = 0.0
            return z_out, None, None, None
        m = len(z) if out is None else len(out)
        at = out if earlier_rows is None or out is None else np.concatenate([out, earlier_rows])
        mean, std = _trailing_mean_std(z, missing if any_missing else None, pos, self.spec.rolling, at)
        if out is None:
            earlier = None if earlier_rows is None else mean[earlier_rows]
        else:
            earlier = None if earlier_rows is None else mean[m:]
            mean, std = mean[:m], std[:m]
        if any_missing:
            np.copyto(z_out, mean, where=missing if out is None else missing[out])
        return z_out, mean, std, earlier

    def _slow_baseline(
        self, grouped: _Grouped, tables: _Tables, rows: np.ndarray, prior: BlockSums | None
    ) -> np.ndarray:
        """Slow baseline of device-grouped ``rows``, standardised: per channel, the median of the means of the
        ``BASELINE_SAMPLES`` blocks of ``baseline_step`` readings (by ``seq``) before the block that holds the
        first reading of the row's rolling window.

        A median, so that a fault shorter than half the baseline moves it not at all: the fault is not learnt
        as normal, and the return to normal after it is not mistaken for a change. Blocks are counted in
        ``seq`` and their sums are added in ``seq`` order, so streaming equals offline: a scorer passes the
        blocks of the readings it no longer holds (``prior``), and every row of a block shares one baseline
        (one median per block and device, not per row). Rows with no earlier block get 0, the training level.
        """
        rolling, step, samples = self.spec.rolling, self.spec.baseline_step, BASELINE_SAMPLES
        device, values, pos, seq, row_table = grouped.device, grouped.values, grouped.pos, grouped.seq, grouped.table
        width = values.shape[1]
        prior = prior if prior is not None else BlockSums.empty(width)
        sums = fold_blocks(prior, device, seq, values, np.zeros(len(seq), np.int32), step)
        first_row = np.flatnonzero(pos == 0)
        device_index = np.cumsum(pos == 0) - 1
        owner = pd.Index(device[first_row], dtype=object).get_indexer(sums.device_id)
        sums = sums.take(owner >= 0)
        owner = owner[owner >= 0]
        current = np.floor_divide(seq[rows] - rolling + 1, step)  # the block of the window's first reading
        low = int(min(sums.block.min(), current.min() - samples)) if len(sums) and len(rows) else 0
        span = (int(max(sums.block.max(), current.max())) - low + 2) if len(sums) and len(rows) else 1
        key = owner * span + (sums.block - low)
        by_key = np.argsort(key, kind="stable")
        key, sums = key[by_key], sums.take(by_key)
        row_device = device_index[rows]
        stop = np.searchsorted(key, row_device * span + (current - low))
        begin = np.maximum(np.searchsorted(key, row_device * span + (current - samples - low)), stop - samples)
        pairs, inverse = np.unique(begin * (len(key) + 1) + stop, return_index=False, return_inverse=True)
        first, last = np.divmod(pairs, len(key) + 1)
        representative = np.zeros(len(pairs), dtype=np.int64)
        representative[inverse.reshape(-1)] = rows  # any row of the group: they share a device
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", category=RuntimeWarning)  # blocks without readings are NaN
            means = sums.total / sums.count
            levels = np.zeros((len(pairs), width))
            for chunk in range(0, len(pairs), 4096):  # bounded memory: (4096, samples, C) at a time
                part = slice(chunk, chunk + 4096)
                take = first[part, None] + np.arange(samples)[None, :]
                valid = take < last[part, None]
                picked = np.where(valid[:, :, None], means[np.where(valid, take, 0)], np.nan)
                levels[part] = _nanmedian_rows(picked)
        levels = np.where(np.isfinite(levels), levels, np.nan)
        table = row_table[representative]
        levels = (levels - tables.per_row("raw_center", table)) / tables.per_row("raw_scale", table)
        return np.nan_to_num(levels, nan=0.0)[inverse.reshape(-1)]


BASELINE_SAMPLES = 50  # blocks the slow baseline takes the median of


@dataclass(frozen=True)
class BlockSums:
    """The slow baseline's state: per device and block of ``step`` readings (by ``seq``), the sums and counts
    of the raw readings of each channel, so that a streaming scorer keeps about ``BASELINE_SAMPLES + 3``
    blocks per device instead of the ``baseline`` readings they summarise.

    Attributes:
        device_id: ``(k,)`` device of each block.
        block: ``(k,)`` block number, ``seq // step``.
        total: ``(k, C)`` sum of the block's readings per channel (missing ones left out), added in ``seq``
            order: the same sum whatever the batch boundaries.
        count: ``(k, C)`` readings summed per channel.
        last: ``(k,)`` the highest ``seq`` summed into the block.
        since: ``(k,)`` the first ``seq`` summed for the block's device (since its blocks were first built).
        partition: ``(k,)`` the partition the device's readings came from.
    """

    device_id: np.ndarray
    block: np.ndarray
    total: np.ndarray
    count: np.ndarray
    last: np.ndarray
    since: np.ndarray
    partition: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> BlockSums:
        ints = np.empty(0, dtype=np.int64)
        return cls(np.empty(0, dtype=object), ints, np.empty((0, channels)), np.empty((0, channels)), ints, ints,
                   np.empty(0, dtype=np.int32))  # fmt: skip

    def __len__(self) -> int:
        return len(self.block)

    def take(self, rows: np.ndarray) -> BlockSums:
        return BlockSums(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(parts: list[BlockSums]) -> BlockSums:
        return BlockSums(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(BlockSums)))

    def of_devices(self, device_ids: np.ndarray) -> np.ndarray:
        """Mask of the blocks of ``device_ids``."""
        return pd.Index(self.device_id, dtype=object).isin(pd.unique(device_ids))  # type: ignore[no-any-return]


def fold_blocks(
    prior: BlockSums,
    device_id: np.ndarray,
    seq: np.ndarray,
    values: np.ndarray,
    partition: np.ndarray,
    step: int,
    keep: int | None = None,
) -> BlockSums:
    """``prior`` with readings added: each device's rows (in ``seq`` order) with a ``seq`` beyond the last one
    summed for it. With ``keep``, only the blocks holding one of each device's last ``keep`` readings (by
    ``seq``) are kept: a scorer's ``reach``, beyond which no later score looks."""
    n = len(seq)
    codes, uniques = pd.factorize(device_id)
    order = np.argsort(codes, kind="stable")  # each device's rows together, in their order
    device, seq, values, partition = device_id[order], seq[order], values[order], np.asarray(partition)[order]
    codes = codes[order]
    # the last seq summed per device in `prior`, -1 for none
    index = pd.Index(uniques, dtype=object)
    held = index.get_indexer(prior.device_id)
    through = np.full(len(uniques), -1, dtype=np.int64)
    since = np.full(len(uniques), -1, dtype=np.int64)
    if len(prior):
        mine = held >= 0
        np.maximum.at(through, held[mine], prior.last[mine])
        since[held[mine]] = prior.since[mine]
    new = seq > through[codes] if n else np.zeros(0, dtype=bool)
    if not new.any():
        return prior
    device, codes, seq, values, partition = device[new], codes[new], seq[new], values[new], partition[new]
    block = np.floor_divide(seq, step)
    starts = np.flatnonzero(np.r_[True, (codes[1:] != codes[:-1]) | (block[1:] != block[:-1])])
    lengths = np.diff(np.r_[starts, len(seq)])
    width = values.shape[1]
    total, count = np.zeros((len(starts), width)), np.zeros((len(starts), width))
    # a device's first new block continues the prior's block of the same number, if any
    replaced = np.zeros(len(prior), dtype=bool)
    if len(prior):
        # (device, block) pairs of the prior's blocks of this batch's devices, the device as its code here
        ours = np.flatnonzero(held >= 0)
        key = pd.MultiIndex.from_arrays([held[ours], prior.block[ours]])
        found = key.get_indexer(pd.MultiIndex.from_arrays([codes[starts], block[starts]]))
        found[found >= 0] = ours[found[found >= 0]]
        found[np.r_[False, codes[starts][1:] == codes[starts][:-1]]] = -1  # only a device's first new block
        hit = found >= 0
        total[hit], count[hit] = prior.total[found[hit]], prior.count[found[hit]]
        replaced[found[hit]] = True
    present = ~np.isnan(values)
    clean = np.where(present, values, 0.0)
    for k in range(int(lengths.max())):  # sequential sums: row k of every block at once
        rows = starts[lengths > k] + k
        total[lengths > k] += clean[rows]
        count[lengths > k] += present[rows]
    first_rows = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    since[codes[first_rows]] = np.where(since[codes[first_rows]] >= 0, since[codes[first_rows]], seq[first_rows])
    fresh = BlockSums(device[starts], block[starts], total, count, seq[starts + lengths - 1],
                      since[codes[starts]], partition[starts + lengths - 1].astype(np.int32))  # fmt: skip
    merged = BlockSums.concat([prior.take(~replaced), fresh])
    if keep is None:
        return merged
    newest = pd.Series(merged.last).groupby(pd.Index(merged.device_id, dtype=object)).transform("max").to_numpy()
    return merged.take((merged.block + 1) * step > newest - keep)


def device_positions(device_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its position among its device's rows in the batch (0 first), and that device's row count."""
    order, pos, _ = _group_rows(device_id)
    n = len(device_id)
    position, count = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    position[order] = pos
    starts = np.flatnonzero(pos == 0)
    count[order] = np.repeat(np.diff(np.r_[starts, n]), np.diff(np.r_[starts, n]))
    return position, count


def trailing_mean(values: np.ndarray, device_id: np.ndarray, length: int) -> np.ndarray:
    """Mean of each row's value and its ``length - 1`` predecessors of the same device (causal, exact).

    The same summation as the rolling features, so a streaming caller holding ``length - 1`` previous
    values per device gets bit-identical results whatever the batch boundaries.

    Args:
        values: ``(n,)`` or ``(n, k)`` float values in arrival order (each device's rows in ``seq`` order).
        device_id: ``(n,)`` device of each row.
        length: window length in readings (1 returns the values unchanged).
    """
    return _trailing_by_device(values, device_id, length, "mean")


def trailing_max(values: np.ndarray, device_id: np.ndarray, length: int) -> np.ndarray:
    """Maximum of each row's value and its ``length - 1`` predecessors of the same device (causal, exact)."""
    return _trailing_by_device(values, device_id, length, "max")


def _trailing_by_device(values: np.ndarray, device_id: np.ndarray, length: int, statistic: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if length <= 1 or len(values) == 0:
        return values.copy()
    order, pos, _ = _group_rows(device_id)
    grouped = values[order]
    if statistic == "max":
        result = _trailing_reduce(grouped, pos, length, np.maximum, -np.inf)
    else:
        counts = np.minimum(pos + 1, length).astype(np.float64)
        result = _trailing_sum(grouped, pos, length) / counts.reshape((-1,) + (1,) * (values.ndim - 1))
    out = np.empty_like(result)
    out[order] = result
    return out


def _nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=1)`` for ``(m, k, C)`` arrays (NaN where a column has no value), by one
    sort: numpy's own falls back to masked arrays for small ``k``, which costs far more than the sort."""
    ordered = np.sort(values, axis=1)  # NaN last
    count = (~np.isnan(values)).sum(axis=1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=1)[:, 0]
    high = np.take_along_axis(ordered, count // 2, axis=1)[:, 0]
    median = (low + high) / 2
    median[count[:, 0] == 0] = np.nan
    return median


def _center_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation ignoring NaN; a flat column gets a small positive spread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN columns are handled below
        center = np.nanmean(values, axis=0)
        scale = np.nanstd(values, axis=0)
    center = np.where(np.isfinite(center), center, 0.0)
    floor = _MIN_SCALE * np.maximum(np.abs(center), 1.0)
    scale = np.where(np.isfinite(scale) & (scale > floor), scale, floor)
    return center, scale


def _group_rows(device_id: np.ndarray, devices: pd.Index | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group rows by device, keeping each device's rows in their given order.

    Returns:
        order: ``(n,)`` permutation putting each device's rows together (stable).
        pos: ``(n,)`` position of each grouped row within its device's rows (0 for the first).
        table_row: ``(n,)`` per original row, 1 + index of its device in ``devices``, or 0 (global) if absent.
    """
    n = len(device_id)
    codes, uniques = pd.factorize(device_id)
    order = np.argsort(codes, kind="stable")
    grouped = codes[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if n else np.zeros(0, dtype=np.int64)
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)
    if devices is None or not len(devices) or not n:
        return order, pos, np.zeros(n, dtype=np.int64)
    unique_table = devices.get_indexer(pd.Index(uniques, dtype=object).astype(str)) + 1  # -1 (absent) -> 0
    return order, pos, unique_table[codes].astype(np.int64)


def _autocorrelation(z: np.ndarray, pos: np.ndarray, lag: int) -> np.ndarray:
    """Per column, the sample autocorrelation at ``lag`` within each device (grouped rows), ignoring NaN."""
    later = np.flatnonzero(pos >= lag)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN columns give 0 below
        deviation = z - np.nanmean(z, axis=0)
        lagged = np.nansum(deviation[later] * deviation[later - lag], axis=0)
        autocorr = lagged / np.nansum(deviation * deviation, axis=0)
    return np.where(np.isfinite(autocorr), autocorr, 0.0)


def _trailing_reduce(
    values: np.ndarray,
    pos: np.ndarray,
    length: int,
    ufunc: np.ufunc = np.add,
    identity: float = 0.0,
    at: np.ndarray | None = None,
) -> np.ndarray:
    """Sum (or max, with ``np.maximum`` and ``-inf``) of each row and its ``length - 1`` predecessors of the
    same device (fewer at a device's start), over device-grouped rows; at rows ``at`` (sorted) only when given.

    A row's terms are always combined in the same order, fixed by ``length`` alone, so its result does not
    depend on how far back the array starts as long as the array holds the row's own window: this is what
    makes batch boundaries invisible (differences of cumulative sums would round differently per batch
    start). Complete windows are combined by doubling (blocks of 1, 2, 4, ... rows), ``O(log length)`` passes.
    With ``at``, the passes run over the rows of those rows' windows alone (a scorer's new rows, not the
    history before their windows), which gives each of them the same result.
    """
    if at is not None:
        windows, place = _window_rows(pos, at, length)
        return _trailing_reduce(values[windows], pos[windows], length, ufunc, identity)[place]  # type: ignore[no-any-return]
    n = len(values)
    total = values.copy()
    if length > 1 and n >= length:
        total[length - 1 :] = identity
        block, size, offset = values, 1, 0
        while size <= length:
            if length & size:
                # Block of `size` rows ending `offset` rows before the row (valid for rows >= length - 1).
                ufunc(total[length - 1 :], block[length - 1 - offset : n - offset], out=total[length - 1 :])
                offset += size
            if 2 * size > length:
                break
            doubled = block.copy()
            ufunc(doubled[size:], block[: n - size], out=doubled[size:])
            block, size = doubled, 2 * size
    # Warm-up rows (fewer than `length` readings so far): newest first, masked at the device's start.
    warm = np.flatnonzero(pos < length - 1)
    if len(warm):
        warm_total = values[warm].copy()
        for k in range(1, length):
            valid = (pos[warm] >= k).reshape((-1,) + (1,) * (values.ndim - 1))
            ufunc(warm_total, np.where(valid, values[np.maximum(warm - k, 0)], identity), out=warm_total)
        total[warm] = warm_total
    return total


def _window_rows(pos: np.ndarray, at: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """For device-grouped rows, the rows of the trailing windows of ``length`` ending at rows ``at`` (sorted
    indices), and where each of ``at`` stands among them."""
    n = len(pos)
    at = np.asarray(at, dtype=np.int64)
    first = at - np.minimum(pos[at], max(length - 1, 0))  # each window's oldest row
    edges = np.bincount(first, minlength=n + 1) - np.bincount(at + 1, minlength=n + 1)
    windows = np.flatnonzero(np.cumsum(edges[:n]) > 0)
    return windows, np.searchsorted(windows, at)


def _trailing_sum(values: np.ndarray, pos: np.ndarray, length: int) -> np.ndarray:
    """Trailing sum per device over device-grouped rows (see ``_trailing_reduce``)."""
    return _trailing_reduce(values, pos, length)


def _trailing_mean_std(
    z: np.ndarray, missing: np.ndarray | None, pos: np.ndarray, length: int, at: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean and standard deviation per device over the last ``length`` available readings, at rows
    ``at`` (default: every row).

    ``missing`` marks NaN entries of ``z`` (None when there are none), which are left out of both.
    """
    if at is not None:  # the same passes over the rows of the windows ending at `at` alone
        windows, place = _window_rows(pos, at, length)
        within = None if missing is None else missing[windows]
        mean, std = _trailing_mean_std(z[windows], within, pos[windows], length)
        return mean[place], std[place]
    z0 = z if missing is None else np.where(missing, 0.0, z)
    mean = _trailing_sum(z0, pos, length)
    variance = _trailing_sum(z0 * z0, pos, length)
    if missing is None:
        counts = np.minimum(pos + 1, length).astype(np.float64)[:, None]
    else:
        counts = _trailing_sum((~missing).astype(np.float64), pos, length)
        np.maximum(counts, 1.0, out=counts)  # no reading in the window: sums are 0, and so are the statistics
    mean /= counts
    variance /= counts
    variance -= mean * mean
    np.maximum(variance, 0.0, out=variance)  # rounding can leave a flat window slightly negative
    return mean, np.sqrt(variance, out=variance)


def _window_index(pos: np.ndarray, window: int) -> np.ndarray:
    """``(n, W)`` indices of each row's feature rows ``t-W+1 .. t`` of its device (rows grouped by device, in
    order; ``pos`` is the row's place in its device's group), padded with the device's first row."""
    back = np.arange(window - 1, -1, -1)
    return np.arange(len(pos))[:, None] - np.minimum(back[None, :], pos[:, None])
