"""Suppression rules: which incidents they mute, the minimums, and a file reloaded while scorers run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anomstream.errors import ConfigError
from anomstream.incidents import Incident, IncidentTracker
from anomstream.suppression import Suppression, SuppressionFile
from tests.test_incidents import CHANNELS, QUIET_MS, anomalies_of, readings

T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def incident(device: str = "pump-7", start_ms: int = T0, readings_: int = 5, peak: float = 2.0) -> Incident:
    return Incident(f"{device}/1", device, start_ms, start_ms + 4000, readings_, peak, start_ms, 1.0, "m", 1,
                    (0.5, 3.0, 1.5), 0, 1, 5, 10, 14)  # fmt: skip


def test_each_condition_of_a_rule_must_hold() -> None:
    rules = Suppression.from_dict({"rules": [
        {"device": "pump-7", "reason": "being replaced"},
        {"device_pattern": "valve-*", "channel": "temperature"},
        {"device_pattern": "*", "start": "2025-12-01T01:00:00Z", "end": "2025-12-01T02:00:00Z"},
    ]})  # fmt: skip
    assert rules.muted_by(incident("pump-7"), "temperature") == "rule device=pump-7 (being replaced)"
    assert rules.muted_by(incident("pump-8"), "temperature") == ""
    assert rules.muted_by(incident("valve-3"), "temperature").startswith("rule device_pattern=valve-*")
    assert rules.muted_by(incident("valve-3"), "flow") == ""  # the pattern alone does not mute
    assert "maintenance window" in rules.muted_by(incident("any", T0 + 3_600_000), "flow")
    assert rules.muted_by(incident("any", T0 + 2 * 3_600_000), "flow") == ""  # the window ended


def test_minimum_readings_and_deviation_mute_small_incidents() -> None:
    rules = Suppression.from_dict({"min_readings": 3, "min_peak_ratio": 1.5})
    assert rules.muted_by(incident(readings_=2), None) == "fewer than 3 flagged readings"
    assert rules.muted_by(incident(peak=1.2), None) == "peak below 1.5 x the threshold"
    assert rules.muted_by(incident(), None) == ""


def test_bad_rules_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="keys"):
        Suppression.from_dict({"rules": [{"devise": "x"}]})
    with pytest.raises(ConfigError, match="ISO 8601"):
        Suppression.from_dict({"rules": [{"start": "next tuesday"}]})
    with pytest.raises(ConfigError, match="unknown"):
        Suppression.from_dict({"rule": []})


def test_muted_incidents_are_marked_not_dropped_and_unmuted_once_they_grow() -> None:
    devices, times, seq, flagged = readings({"a": list(range(5, 12)), "b": [3]}, 40)
    tracker = IncidentTracker(CHANNELS, QUIET_MS, "t", Suppression.from_dict({"min_readings": 3}))
    first, second = slice(0, 14), slice(14, 80)  # a has 2 flagged readings in the first batch, 7 in all
    events = []
    for part in (first, second):
        step = tracker.step(anomalies_of(devices[part], times[part], seq[part], flagged[part]), devices[part],
                            times[part])  # fmt: skip
        tracker.apply(step)
        events += step.events
    a = [(e["state"], e["readings"], e["muted"]) for e in events if e["device_id"] == "a"]
    assert a == [("open", 2, True), ("update", 7, False), ("closed", 7, False)]
    b = [(e["state"], e["muted"], e["muted_by"]) for e in events if e["device_id"] == "b"]
    assert b[0] == ("open", True, "fewer than 3 flagged readings")


def test_the_file_is_reloaded_when_it_changes_and_a_broken_one_keeps_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "mute.json"
    path.write_text(json.dumps({"rules": [{"device": "pump-7"}]}))
    source = SuppressionFile(path)
    assert len(source.current.rules) == 1
    path.write_text(json.dumps({"rules": [{"device": "pump-7"}, {"device": "pump-8"}]}))
    os.utime(path, (1, 1))  # a new modification time, whatever the clock's resolution
    assert len(source.refresh(force=True).rules) == 2
    path.write_text("{not json")
    os.utime(path, (2, 2))
    assert len(source.refresh(force=True).rules) == 2  # kept, and the reason logged
    assert SuppressionFile(None).refresh().muted_by(incident(), None) == ""
