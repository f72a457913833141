"""Feature pipeline: values, causality and batch-boundary invariance, interleaved devices, persistence."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from anomstream.features import (
    FeaturePipeline,
    FeatureSpec,
    _nanmedian_rows,
    _trailing_reduce,
    device_positions,
    trailing_max,
    trailing_mean,
)
from anomstream.telemetry import TelemetryBatch

CHANNELS = ("flow", "temperature", "vibration")


def fleet(n: int, devices: int, seed: int = 0, nan_fraction: float = 0.0) -> TelemetryBatch:
    """Interleaved readings of several devices: a random-walk channel, two noisy ones."""
    rng = np.random.default_rng(seed)
    device = rng.integers(0, devices, n)
    seq = np.zeros(n, dtype=np.int64)
    for d in range(devices):
        seq[device == d] = np.arange((device == d).sum())
    values = np.column_stack(
        [
            32 + rng.normal(size=n),
            70 + np.cumsum(rng.normal(scale=0.3, size=n)),
            rng.gamma(2.0, size=n),
        ]
    )
    if nan_fraction:
        values[rng.random(values.shape) < nan_fraction] = np.nan
    ids = np.array([f"pump-{d}" for d in range(devices)], dtype=object)[device]
    return TelemetryBatch(ids, seq * 1000, seq, CHANNELS, values, np.zeros(n, dtype=np.int8))


Scoring = Callable[[TelemetryBatch], np.ndarray]


def stream(batch: TelemetryBatch, context: int, cuts: np.ndarray, score: Scoring) -> np.ndarray:
    """What a streaming scorer computes: per batch, the last ``context`` rows per device prepended, then
    their results dropped."""
    parts = []
    history: TelemetryBatch | None = None
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        new = batch.take(slice(start, stop))
        full = new if history is None else TelemetryBatch.concat([history, new])
        parts.append(score(full)[len(full) - len(new) :])
        position, count = device_positions(full.device_id)
        history = full.take(position >= count - context)
    return np.concatenate(parts)


SPECS = [
    FeatureSpec(channels=CHANNELS),
    FeatureSpec(channels=CHANNELS, rolling=7),
    FeatureSpec(channels=CHANNELS, rolling=12, raw=False, rolling_stats=("mean",), detrend_persistent=True),
    FeatureSpec(channels=CHANNELS, rolling=5, window=4, detrend_persistent=True),
    FeatureSpec(channels=CHANNELS, window=6, standardise=False),
    FeatureSpec(channels=CHANNELS, rolling=6, raw=False, detrend_persistent=True, baseline=120),
    FeatureSpec(channels=CHANNELS, rolling=5, window=3, baseline=37),
]


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"r{s.rolling}w{s.window}d{int(s.detrend_persistent)}b{s.baseline}"
)
@pytest.mark.parametrize("nan_fraction", [0.0, 0.03])
def test_random_batches_with_context_history_equal_whole_sequence_exactly(spec, nan_fraction):
    batch = fleet(3000, devices=5, seed=1, nan_fraction=nan_fraction)
    pipeline = FeaturePipeline(spec).fit(batch.take(slice(0, 1500)), per_device=True)
    whole = pipeline.transform(batch)
    rng = np.random.default_rng(7)
    for _ in range(3):
        cuts = np.r_[0, np.sort(rng.choice(np.arange(1, len(batch)), 60, replace=False)), len(batch)]
        streamed = stream(batch, pipeline.context, cuts, pipeline.transform)
        assert np.array_equal(streamed, whole, equal_nan=True)
    assert not np.isnan(whole).any()


@pytest.mark.parametrize(
    "spec", SPECS[3:], ids=lambda s: f"r{s.rolling}w{s.window}d{int(s.detrend_persistent)}b{s.baseline}"
)
def test_features_of_only_the_needed_rows_equal_the_whole_sequence(spec):
    # The scorer asks for the new rows' features only (and their windows'); history rows are inputs.
    batch = fleet(3000, devices=5, seed=3, nan_fraction=0.02)
    pipeline = FeaturePipeline(spec).fit(batch.take(slice(0, 1500)), per_device=True)
    whole = np.asarray(pipeline.transform(batch))

    def new_rows_only(full: TelemetryBatch, new: int) -> np.ndarray:
        is_new = (np.arange(len(full)) >= len(full) - new).astype(np.float64)
        needed = trailing_max(is_new[::-1], full.device_id[::-1], spec.window)[::-1] > 0
        return np.asarray(pipeline.transform(full, needed=needed))

    cuts = np.r_[0, np.sort(np.random.default_rng(8).choice(np.arange(1, len(batch)), 40, replace=False)), len(batch)]
    parts, history = [], None
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        new = batch.take(slice(start, stop))
        full = new if history is None else TelemetryBatch.concat([history, new])
        parts.append(new_rows_only(full, len(new))[len(full) - len(new) :])
        position, count = device_positions(full.device_id)
        history = full.take(position >= count - pipeline.context)
    assert np.array_equal(np.concatenate(parts), whole, equal_nan=True)


def test_slow_baseline_follows_drift_but_not_a_fault_shorter_than_half_of_it():
    n = 3000
    rng = np.random.default_rng(4)
    drift = np.linspace(0.0, 30.0, n)  # 30 training spreads over the run: far beyond any training period
    fault = np.zeros(n)
    fault[2000:2300] = 8.0  # 300 readings: shorter than half of the 1,000-reading baseline
    values = (drift + fault + rng.normal(size=n))[:, None]
    batch = TelemetryBatch(np.full(n, "d", dtype=object), np.arange(n) * 1000, np.arange(n), ("x",), values,
                           np.zeros(n, dtype=np.int8))  # fmt: skip
    spec = FeatureSpec(channels=("x",), rolling=10, raw=False, rolling_stats=("mean",), standardise=False,
                       baseline=1000)  # fmt: skip
    level = FeaturePipeline(spec).fit(batch.take(slice(0, 400))).transform(batch)[:, 0]
    # the first reading of the oldest of 50 blocks of 20 before the block of the window's first reading
    assert spec.warm_up == 9 and spec.context == (10 - 1) + 19 + 50 * 20
    normal_before, in_fault, after = level[1100:1990], level[2020:2300], level[2320:]
    assert np.abs(normal_before).max() < 8.0  # the drift is followed: levels stay near the recent median
    assert in_fault.min() > 5.0  # the whole fault stands out: the median never learnt it
    assert np.abs(after).max() < np.abs(normal_before).max() + 1.0  # and no mirror image after it


def test_one_row_batches_equal_whole_sequence():
    batch = fleet(400, devices=3, seed=2)
    pipeline = FeaturePipeline(SPECS[2]).fit(batch)
    cuts = np.arange(len(batch) + 1)
    streamed = stream(batch, pipeline.context, cuts, pipeline.transform)
    assert np.array_equal(streamed, pipeline.transform(batch))


def test_interleaved_devices_get_the_features_of_each_device_alone():
    batch = fleet(2000, devices=4, seed=3)
    pipeline = FeaturePipeline(SPECS[3]).fit(batch, per_device=True)
    together = pipeline.transform(batch)
    for device in np.unique(batch.device_id):
        rows = np.flatnonzero(batch.device_id == device)
        assert np.array_equal(pipeline.transform(batch.take(rows)), together[rows])


def test_features_are_causal_future_readings_change_nothing():
    batch = fleet(600, devices=2, seed=4)
    pipeline = FeaturePipeline(SPECS[3]).fit(batch)
    before = pipeline.transform(batch.take(slice(0, 400)))
    changed = batch.values.copy()
    changed[400:] += 1000.0
    altered = TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, CHANNELS, changed, batch.label)
    assert np.array_equal(pipeline.transform(altered)[:400], before)


def test_rolling_statistics_match_pandas_over_available_readings():
    batch = fleet(1500, devices=3, seed=5, nan_fraction=0.05)
    spec = FeatureSpec(channels=CHANNELS, rolling=9, standardise=False)
    features = FeaturePipeline(spec).fit(batch).transform(batch)
    frame = pd.DataFrame(batch.values, columns=CHANNELS).assign(device=batch.device_id)
    rolling = frame.groupby("device")[list(CHANNELS)].rolling(9, min_periods=1)
    mean = rolling.mean().reset_index(level=0, drop=True).sort_index().to_numpy()
    std = rolling.std(ddof=0).reset_index(level=0, drop=True).sort_index().to_numpy()
    assert np.allclose(features[:, 3:6], mean, atol=1e-9)
    assert np.allclose(features[:, 6:9], std, atol=1e-7)
    # A missing reading takes its channel's trailing mean (standardise=False: the raw mean).
    missing = np.isnan(batch.values)
    assert np.allclose(features[:, :3][missing], mean[missing])


def test_standardisation_uses_the_training_rows():
    batch = fleet(1000, devices=1, seed=6)
    pipeline = FeaturePipeline(FeatureSpec(channels=CHANNELS)).fit(batch.take(slice(0, 500)))
    train = pipeline.transform(batch.take(slice(0, 500)))
    assert np.allclose(train.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(train.std(axis=0), 1.0, atol=1e-9)


def test_windows_hold_the_device_previous_rows_newest_last_padded_with_the_first():
    batch = fleet(50, devices=1, seed=7)
    points = FeaturePipeline(FeatureSpec(channels=CHANNELS)).fit(batch).transform(batch)
    windows = FeaturePipeline(FeatureSpec(channels=CHANNELS, window=4)).fit(batch).transform(batch)
    assert windows.shape == (50, 4, 3) and windows.dtype == np.float32  # the autoencoders' own precision
    points = points.astype(np.float32)
    assert np.array_equal(windows[10], points[7:11])
    assert np.array_equal(windows[1], points[[0, 0, 0, 1]])


def test_persistent_channel_is_detrended_and_noisy_ones_keep_their_level():
    batch = fleet(3000, devices=1, seed=8)
    pipeline = FeaturePipeline(SPECS[2]).fit(batch)
    assert pipeline.to_dict()["global"]["persistent"] == [0.0, 1.0, 0.0]
    shifted = batch.values.copy()
    shifted[2000:] += [0.0, 50.0, 0.0]  # a lasting offset in the drifting channel only
    moved = TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, CHANNELS, shifted, batch.label)
    delta = pipeline.transform(moved) - pipeline.transform(batch)
    assert np.abs(delta[2000:2010, 1]).min() > 1.0  # seen while the change is recent
    assert np.allclose(delta[2030:, 1], 0.0, atol=1e-9)  # forgotten once both windows moved past it


def test_context_and_feature_channel_map():
    spec = FeatureSpec(channels=CHANNELS, rolling=10, window=5, detrend_persistent=True)
    assert spec.context == 9 + 10 + 4
    assert spec.feature_names[:4] == ("raw:flow", "raw:temperature", "raw:vibration", "rolling_mean:flow")
    assert spec.feature_channel.tolist() == [0, 1, 2] * 3
    assert FeatureSpec(channels=CHANNELS).context == 0


def test_spec_and_pipeline_round_trip_through_json():
    import json

    batch = fleet(800, devices=3, seed=9)
    pipeline = FeaturePipeline(SPECS[3]).fit(batch, per_device=True)
    loaded = FeaturePipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    assert loaded.spec == pipeline.spec
    assert np.array_equal(loaded.transform(batch), pipeline.transform(batch))


def test_per_device_statistics_depend_on_the_device_rows_only():
    batch = fleet(1200, devices=3, seed=10)
    alone_rows = np.flatnonzero(batch.device_id == "pump-1")
    alone = batch.take(alone_rows)
    with_fleet = FeaturePipeline(SPECS[2]).fit(batch, per_device=True).transform(alone)
    by_itself = FeaturePipeline(SPECS[2]).fit(alone, per_device=True).transform(alone)
    assert np.array_equal(with_fleet, by_itself)


def test_trailing_mean_and_max_are_per_device_and_batch_invariant():
    batch = fleet(500, devices=3, seed=11)
    values = batch.values[:, 0]
    mean = trailing_mean(values, batch.device_id, 4)
    peak = trailing_max(values, batch.device_id, 4)
    rows = np.flatnonzero(batch.device_id == "pump-2")
    own = values[rows]
    assert mean[rows][5] == pytest.approx(own[2:6].mean())
    assert peak[rows][5] == own[2:6].max()
    assert peak[rows][1] == own[:2].max()

    def both(part: TelemetryBatch) -> np.ndarray:
        flow, device = part.values[:, 0], part.device_id
        return np.column_stack([trailing_mean(flow, device, 4), trailing_max(flow, device, 4)])

    cuts = np.r_[0, np.arange(7, 500, 37), 500]
    assert np.array_equal(stream(batch, 3, cuts, both), both(batch))


@pytest.mark.parametrize("length", [1, 2, 3, 7, 20, 21, 39, 64])
def test_trailing_statistics_at_a_few_rows_equal_those_of_every_row_bit_for_bit(length):
    # The scorer computes its history-heavy batches' statistics at the new rows only (a tree over each row's
    # own window); the trainer over every row (doubling passes): both must combine the same terms the same way.
    rng = np.random.default_rng(length)
    pos = np.concatenate([np.arange(k) for k in rng.integers(1, 90, size=120)])
    values = rng.normal(size=(len(pos), 3)) * 1e3
    values[rng.random(values.shape) < 0.05] = np.nan
    at = np.sort(rng.choice(len(pos), size=len(pos) // 5, replace=False))
    for ufunc, identity in ((np.add, 0.0), (np.maximum, -np.inf)):
        every = _trailing_reduce(values, pos, length, ufunc, identity)
        assert np.array_equal(_trailing_reduce(values, pos, length, ufunc, identity, at=at), every[at], equal_nan=True)
        assert np.array_equal(
            _trailing_reduce(values[:, 0], pos, length, ufunc, identity, at=at), every[at, 0], equal_nan=True
        )


def test_the_slow_baseline_median_equals_numpy_nanmedian():
    rng = np.random.default_rng(5)
    blocks = rng.normal(size=(300, 50, 4))
    blocks[rng.random(blocks.shape) < 0.4] = np.nan
    blocks[7], blocks[8, 1:] = np.nan, np.nan  # no value at all; one value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # the all-NaN rows
        expected = np.nanmedian(blocks, axis=1)
    assert np.array_equal(_nanmedian_rows(blocks), expected, equal_nan=True)


def test_million_rows_of_eight_channels_transform_in_seconds_without_record_loops():
    rng = np.random.default_rng(12)
    n = 1_000_000
    ids = np.array([f"d{i}" for i in range(1000)], dtype=object)[rng.integers(0, 1000, n)]
    channels = tuple(f"c{i}" for i in range(8))
    values = rng.normal(size=(n, 8))
    batch = TelemetryBatch(ids, np.arange(n), np.arange(n), channels, values, np.zeros(n, np.int8))
    spec = FeatureSpec(channels=channels, rolling=10, raw=False, detrend_persistent=True)
    pipeline = FeaturePipeline(spec).fit(batch.take(slice(0, 50_000)))
    started = time.perf_counter()
    features = pipeline.transform(batch)
    elapsed = time.perf_counter() - started
    assert features.shape == (n, 16)
    # About a second on an idle core; the bound leaves room for a shared CI machine, not for Python loops.
    assert elapsed < 15.0
