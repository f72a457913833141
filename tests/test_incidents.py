"""Incidents from flagged readings: open, update, close; batch boundaries and restores change nothing."""

from __future__ import annotations

from typing import Any

import numpy as np

from anomstream.incidents import CLOSED, OPEN, UPDATE, IncidentTracker, offline_incidents
from anomstream.telemetry import AnomalyColumns

CHANNELS = ("flow", "temperature", "vibration")
QUIET_MS = 10_000


def readings(flags_per_device: dict[str, list[int]], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` readings per device one second apart, interleaved; which are flagged; their seq."""
    devices = np.repeat(np.array(list(flags_per_device), dtype=object), n).reshape(len(flags_per_device), n).T.ravel()
    seq = np.repeat(np.arange(n), len(flags_per_device))
    flagged = np.zeros(len(seq), dtype=bool)
    for d, flagged_seq in flags_per_device.items():
        flagged[(devices == d) & np.isin(seq, flagged_seq)] = True
    return devices, seq * 1000, seq, flagged


def anomalies_of(
    devices: np.ndarray, times: np.ndarray, seq: np.ndarray, flagged: np.ndarray, offset: np.ndarray | None = None
) -> AnomalyColumns:
    rows = np.flatnonzero(flagged)
    offset = np.arange(len(seq)) if offset is None else offset
    weights = np.column_stack([1 + offset[rows] % 3, 1 + offset[rows] % 5, 1 + offset[rows] % 7]).astype(float)
    shares = weights / weights.sum(axis=1, keepdims=True)  # each reading's own shares, whatever the batch
    return AnomalyColumns(
        device_id=devices[rows], event_time_ms=times[rows], seq=seq[rows], score=1.0 + seq[rows] % 7 / 10,
        threshold=1.0, model="m", model_version=3, channels=CHANNELS, contributions=shares, source_topic="t",
        source_partition=np.zeros(len(rows), dtype=np.int32), source_offset=offset[rows].astype(np.int64),
        label=np.zeros(len(rows), dtype=np.int8), scored_at_ms=0,
    )  # fmt: skip


def streamed(batches: list[slice], data: tuple[np.ndarray, ...], restore_every: int = 0) -> list[dict[str, Any]]:
    """Events of a scorer fed ``batches``; with ``restore_every``, every that many batches the tracker is
    replaced by a new one restored from each device's last event, as after a rebalance."""
    devices, times, seq, flagged = data
    tracker = IncidentTracker(CHANNELS, QUIET_MS, "t")
    events: list[dict[str, Any]] = []
    for i, part in enumerate(batches):
        offset = np.arange(len(seq))[part]
        step = tracker.step(anomalies_of(devices[part], times[part], seq[part], flagged[part], offset),
                            devices[part], times[part])  # fmt: skip
        tracker.apply(step)
        events += step.events
        if restore_every and i % restore_every == restore_every - 1:
            last = {e["device_id"]: e for e in events}
            tracker = IncidentTracker(CHANNELS, QUIET_MS, "t")
            tracker.restore(list(last.values()))
    return events


def test_an_alarm_opens_takes_in_flags_within_the_quiet_time_and_closes_after_it() -> None:
    data = readings({"a": [5, 6, 7, 12, 30, 31], "b": [55]}, 60)
    events = streamed([slice(0, len(data[0]))], data)
    a = [(e["state"], e["incident_id"], e["readings"], e["start_time"], e["end_time"]) for e in events
         if e["device_id"] == "a"]  # fmt: skip
    # 5..12 is one incident (gaps under 10 s); 30 comes 18 s after 12: a second one, which closes 10 s after 31
    assert a == [(OPEN, "a/5", 4, 5000, 12000), (CLOSED, "a/5", 4, 5000, 12000),
                 (OPEN, "a/30", 2, 30000, 31000), (CLOSED, "a/30", 2, 30000, 31000)]  # fmt: skip
    b = [(e["state"], e["readings"]) for e in events if e["device_id"] == "b"]
    assert b == [(OPEN, 1)]  # 4 s of readings after it are not enough to close it: still open
    first = events[0]
    assert first["peak_score"] == max(1.0 + s % 7 / 10 for s in (5, 6, 7, 12)) and first["model_version"] == 3
    assert abs(sum(first["contributions"].values()) - 4.0) < 1e-9  # shares of 4 readings, each summing to 1
    assert first["top_channels"][0] == max(first["contributions"], key=first["contributions"].get)


def test_an_incident_spanning_batches_gets_updates_and_the_step_changes_nothing_until_applied() -> None:
    data = readings({"a": list(range(10, 30))}, 80)
    tracker = IncidentTracker(CHANNELS, QUIET_MS, "t")
    devices, times, seq, flagged = data
    states = []
    for part in (slice(0, 15), slice(15, 25), slice(25, 80)):
        step = tracker.step(anomalies_of(devices[part], times[part], seq[part], flagged[part]), devices[part],
                            times[part])  # fmt: skip
        assert tracker.open == {} or step.open is not tracker.open
        before = dict(tracker.open)
        assert tracker.open == before  # not applied yet: an aborted batch is redone from the same state
        tracker.apply(step)
        states += [(e["state"], e["readings"]) for e in step.events]
    assert states == [(OPEN, 5), (UPDATE, 15), (UPDATE, 20), (CLOSED, 20)]
    assert tracker.open == {}


def test_incidents_do_not_depend_on_batch_boundaries_or_restores() -> None:
    rng = np.random.default_rng(3)
    flags = {f"d{i}": sorted(rng.choice(2000, size=120, replace=False).tolist()) for i in range(4)}
    data = readings(flags, 2000)
    n = len(data[0])
    devices, times, seq, flagged = data
    offline = offline_incidents(IncidentTracker(CHANNELS, QUIET_MS, "t"),
                                anomalies_of(devices, times, seq, flagged), devices, times)  # fmt: skip
    assert 20 < len(offline) < 480  # flags merged into incidents, not one per flag
    for restore_every in (0, 3):
        cuts = np.r_[0, np.sort(rng.choice(np.arange(1, n), 150, replace=False)), n]
        events = streamed([slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)], data, restore_every)
        last = {e["incident_id"]: e for e in events}
        assert set(last) == set(offline)
        for incident_id, event in last.items():
            expected = offline[incident_id]
            assert (event["state"] == CLOSED) == (expected["state"] == CLOSED)  # open at the end: open or update
            for key in ("start_time", "end_time", "readings", "peak_score", "peak_time", "first_offset", "last_offset"):
                assert event[key] == expected[key], (incident_id, key)
            for channel in CHANNELS:  # sums added in another order across batches: equal to rounding
                assert abs(event["contributions"][channel] - expected["contributions"][channel]) < 1e-9


def test_forget_drops_the_incidents_of_revoked_partitions() -> None:
    tracker = IncidentTracker(CHANNELS, QUIET_MS, "t")
    data = readings({"a": [1], "b": [2]}, 5)
    devices, times, seq, flagged = data
    anomalies = anomalies_of(devices, times, seq, flagged)
    anomalies = AnomalyColumns(**{**anomalies.__dict__, "source_partition": np.array([0, 1], dtype=np.int32)})
    tracker.apply(tracker.step(anomalies, devices, times))
    assert set(tracker.open) == {"a", "b"}
    tracker.forget({1})
    assert set(tracker.open) == {"a"}
