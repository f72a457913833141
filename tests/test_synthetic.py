"""Synthetic fleet: determinism, labels marking exactly the injected anomalies, shape and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from anomstream.synthetic import ANOMALY_KINDS, FleetSpec, generate_fleet, iter_fleet, plan_anomalies
from anomstream.telemetry import TelemetryBatch


def columns_equal(a: TelemetryBatch, b: TelemetryBatch) -> bool:
    return (
        np.array_equal(a.device_id, b.device_id)
        and np.array_equal(a.event_time_ms, b.event_time_ms)
        and np.array_equal(a.seq, b.seq)
        and np.array_equal(a.values, b.values)
        and np.array_equal(a.label, b.label)
        and a.channels == b.channels
    )


def test_same_seed_same_records_regardless_of_chunking() -> None:
    spec = FleetSpec(devices=5, records=30_000, channels=4, seed=11, anomaly_rate=0.03)
    first = generate_fleet(spec)
    again = TelemetryBatch.concat(list(iter_fleet(spec, chunk_rows=997)))
    assert columns_equal(first, again)


def test_different_seeds_differ() -> None:
    a = generate_fleet(FleetSpec(devices=2, records=2_000, seed=1))
    b = generate_fleet(FleetSpec(devices=2, records=2_000, seed=2))
    assert not np.array_equal(a.values, b.values)
    assert np.array_equal(a.seq, b.seq)  # same shape of fleet, different readings


def test_labels_mark_exactly_the_injected_rows() -> None:
    spec = FleetSpec(devices=4, records=80_000, channels=6, seed=5, anomaly_rate=0.05)
    dirty = generate_fleet(spec)
    clean = generate_fleet(FleetSpec(devices=4, records=80_000, channels=6, seed=5, anomaly_rate=0.0))

    deviates = (dirty.values != clean.values).any(axis=1)
    assert clean.label.sum() == 0
    assert np.array_equal(deviates, dirty.label == 1)
    assert 0.03 < dirty.label.mean() < 0.07

    segments = plan_anomalies(spec)
    assert set(segments.kind.tolist()) == set(range(len(ANOMALY_KINDS)))  # every kind occurs
    expected = np.zeros(len(dirty), dtype=bool)
    ids = spec.device_ids()
    for d, start, end in zip(segments.device, segments.start, segments.end, strict=True):
        expected |= (dirty.device_id == ids[d]) & (dirty.seq >= start) & (dirty.seq < end)
    assert np.array_equal(expected, dirty.label == 1)


def test_anomalies_are_large_against_the_channel_spread() -> None:
    spec = FleetSpec(devices=3, records=60_000, channels=4, seed=3, anomaly_rate=0.05)
    dirty = generate_fleet(spec)
    clean = generate_fleet(FleetSpec(devices=3, records=60_000, channels=4, seed=3, anomaly_rate=0.0))
    segments = plan_anomalies(spec)
    ids = spec.device_ids()
    spike = ANOMALY_KINDS.index("spike")
    for i in np.flatnonzero(segments.kind == spike)[:10]:
        device_rows = dirty.device_id == ids[segments.device[i]]
        row = np.flatnonzero(device_rows & (dirty.seq == segments.start[i]))[0]
        channel = segments.channel[i]
        spread = clean.values[device_rows, channel].std()
        assert abs(dirty.values[row, channel] - clean.values[row, channel]) > 2 * spread


def test_fleet_layout_interleaved_and_ordered() -> None:
    spec = FleetSpec(devices=3, records=10, channels=2, start_ms=1_000, step_ms=500)
    batch = generate_fleet(spec)
    assert batch.device_id.tolist()[:6] == ["sim-0000", "sim-0001", "sim-0002"] * 2
    assert [int((batch.device_id == d).sum()) for d in spec.device_ids()] == [4, 3, 3]
    for device in spec.device_ids():
        rows = batch.device_id == device
        assert batch.seq[rows].tolist() == list(range(int(rows.sum())))
        assert batch.event_time_ms[rows].tolist() == [1_000 + 500 * s for s in batch.seq[rows]]
    assert batch.values.shape == (10, 2) and np.isfinite(batch.values).all()


def test_channels_are_correlated() -> None:
    batch = generate_fleet(FleetSpec(devices=1, records=20_000, channels=6, seed=9, anomaly_rate=0.0))
    correlation = np.corrcoef(batch.values.T)
    off_diagonal = np.abs(correlation[~np.eye(6, dtype=bool)])
    assert off_diagonal.max() > 0.5


def test_invalid_spec_is_refused() -> None:
    with pytest.raises(ValueError):
        FleetSpec(devices=0)
    with pytest.raises(ValueError):
        FleetSpec(anomaly_rate=0.9)


def test_a_million_records_in_a_few_seconds() -> None:
    started = time.perf_counter()
    rows = sum(len(b) for b in iter_fleet(FleetSpec(devices=100, records=1_000_000, channels=8)))
    elapsed = time.perf_counter() - started
    assert rows == 1_000_000
    assert elapsed < 8.0, f"1M records took {elapsed:.1f} s"  # ~1 s on an idle core; generous when shared
