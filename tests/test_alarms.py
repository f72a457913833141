"""Alarm- and incident-level quality against labelled faults."""

from __future__ import annotations

import numpy as np
import pytest

from anomstream.alarms import alarm_quality, incident_quality


def test_alarms_are_runs_of_flags_and_count_once_per_fault() -> None:
    device = np.array(["a"] * 10 + ["b"] * 6, dtype=object)
    label = np.array([0, 1, 1, 1, 0, 0, 0, 0, 1, 1] + [0, 0, 0, 1, 0, 0])
    flagged = np.array([0, 0, 1, 1, 1, 0, 1, 0, 0, 0] + [1, 0, 0, 0, 0, 0], dtype=bool)
    q = alarm_quality(device, label, flagged)
    # a: alarms at 2-4 (true) and 6 (false); faults 1-3 (found) and 8-9 (missed); b: a false alarm, a missed fault
    assert (q["alarms"], q["true_alarms"], q["faults"], q["faults_found"]) == (3, 1, 3, 1)
    assert q["alarm_precision"] == pytest.approx(1 / 3) and q["alarm_recall"] == pytest.approx(1 / 3)


def test_incidents_are_true_when_they_overlap_a_fault_and_delays_count_from_the_fault_start() -> None:
    device = np.array(["a"] * 100 + ["b"] * 100, dtype=object)
    times = np.tile(np.arange(100) * 1000, 2)
    label = np.zeros(200, dtype=int)
    label[20:40] = 1  # a: 20-39 s
    label[70:80] = 1  # a: 70-79 s
    label[150:160] = 1  # b: 50-59 s
    incidents = [("a", 25_000, 45_000), ("a", 10_000, 12_000), ("a", 60_000, 75_000), ("b", 90_000, 95_000)]
    q = incident_quality(device, times, label, incidents)
    assert (q["incidents"], q["true_incidents"], q["faults"], q["faults_found"]) == (4, 2, 3, 2)
    assert q["incident_precision"] == 0.5 and q["incident_recall"] == pytest.approx(2 / 3)
    assert q["delay_median_s"] == pytest.approx(2.5)  # 5 s after the first fault; already open for the second
    assert incident_quality(device, times, label, [])["incident_precision"] == 0.0
