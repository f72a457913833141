"""Alarm-level quality: how many alarms were right, how many faults raised one.

People are paged per alarm, not per reading. An **alarm** is a maximal run of consecutive flagged readings of
one device; a **fault** is a maximal run of consecutive readings labelled anomalous. An alarm is *true* when
it overlaps a fault, and a fault is *found* when an alarm overlaps it:

- ``precision = true alarms / alarms``: the share of pages that were worth it;
- ``recall = found faults / faults``: the share of faults that paged someone.

Point-wise figures (every reading counted, SKAB's convention) are in :mod:`anomstream.evaluation`; these
complement them where faults are short and alarms are held (a 3-reading spike held for 20 readings is one
true alarm, not 3 true and 17 false readings). Readings labelled ``NO_LABEL`` count as normal here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomstream.features import device_positions


def _runs(device_id: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Run number of every row in ``mask`` (-1 elsewhere) and the number of runs; rows grouped per device
    in their order (each device's rows must be in ``seq`` order)."""
    order = np.lexsort((device_positions(device_id)[0], np.unique(device_id, return_inverse=True)[1]))
    grouped, devices = mask[order], np.asarray(device_id)[order]
    starts = grouped & ~np.r_[False, grouped[:-1] & (devices[1:] == devices[:-1])]
    run = np.cumsum(starts) - 1
    ids = np.full(len(mask), -1, dtype=np.int64)
    ids[order] = np.where(grouped, run, -1)
    return ids, int(starts.sum())


def alarm_quality(device_id: np.ndarray, label: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Alarms, faults, their overlap, precision and recall (JSON-ready).

    Args:
        device_id: ``(n,)`` device of each reading.
        label: ``(n,)`` 1 for anomalous readings (anything else is normal).
        flagged: ``(n,)`` the readings flagged.
    """
    flagged, anomalous = np.asarray(flagged, dtype=bool), np.asarray(label) == 1
    alarm, alarms = _runs(device_id, flagged)
    fault, faults = _runs(device_id, anomalous)
    both = flagged & anomalous
    true_alarms = len(np.unique(alarm[both]))
    found = len(np.unique(fault[both]))
    return {
        "alarms": alarms,
        "true_alarms": true_alarms,
        "faults": faults,
        "faults_found": found,
        "alarm_precision": true_alarms / alarms if alarms else 0.0,
        "alarm_recall": found / faults if faults else 0.0,
    }


def incident_quality(
    device_id: np.ndarray, event_time_ms: np.ndarray, label: np.ndarray, incidents: list[tuple[str, int, int]]
) -> dict[str, Any]:
    """Incident-level quality against labelled faults (JSON-ready).

    An incident (``(device, start_ms, end_ms)``, from :mod:`anomstream.incidents`) is *true* when its time
    span overlaps a fault of its device; a fault is *found* when an incident overlaps it, and its *delay* is
    the time from the fault's first reading to the start of the first incident overlapping it (0 for one
    that was already open).

    Args:
        device_id: ``(n,)`` device of each reading.
        event_time_ms: ``(n,)`` event time of each reading.
        label: ``(n,)`` 1 for anomalous readings (anything else is normal).
        incidents: each incident's device, start and end event time.
    """
    fault, faults = _runs(device_id, np.asarray(label) == 1)
    rows = np.flatnonzero(fault >= 0)
    times = np.asarray(event_time_ms)[rows]
    spans: dict[int, list[Any]] = {}
    for run, device, t in zip(fault[rows], np.asarray(device_id)[rows], times, strict=True):
        span = spans.setdefault(int(run), [str(device), int(t), int(t)])
        span[1], span[2] = min(span[1], int(t)), max(span[2], int(t))
    by_device: dict[str, list[tuple[int, int]]] = {}
    for device, start, end in spans.values():
        by_device.setdefault(device, []).append((start, end))
    true_incidents, delays = 0, dict[tuple[str, int], float]()
    for device, start, end in incidents:
        overlapping = [(a, b) for a, b in by_device.get(device, []) if start <= b and end >= a]
        true_incidents += bool(overlapping)
        for a, _ in overlapping:
            delay = max(0, start - a) / 1000
            delays[(device, a)] = min(delays.get((device, a), delay), delay)
    found = len(delays)
    waits = np.array(sorted(delays.values()))
    return {
        "incidents": len(incidents),
        "true_incidents": true_incidents,
        "faults": faults,
        "faults_found": found,
        "incident_precision": true_incidents / len(incidents) if incidents else 0.0,
        "incident_recall": found / faults if faults else 0.0,
        "incidents_per_found_fault": true_incidents / found if found else 0.0,
        "delay_median_s": float(np.median(waits)) if found else None,
        "delay_p95_s": float(np.percentile(waits, 95)) if found else None,
    }
