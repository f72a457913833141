"""Suppression: rules that mute incidents, read from a file that can change while scorers run.

A muted incident is still written to the incident topic, marked (``muted``: true, ``muted_by``: why), and
counted; downstream alerting skips it. Per-reading anomaly records are never muted: they are the evidence.

The file is JSON::

    {
      "rules": [
        {"device": "pump-7", "reason": "being replaced"},
        {"device_pattern": "skab-valve2-*"},
        {"channel": "Temperature"},
        {"device_pattern": "*", "start": "2026-12-24T18:00:00Z", "end": "2026-12-27T06:00:00Z",
         "reason": "holiday shutdown"}
      ],
      "min_readings": 3,
      "min_peak_ratio": 1.2
    }

A rule matches an incident when every condition it names holds: ``device`` (exact id), ``device_pattern``
(shell-style, ``fnmatch``), ``channel`` (the incident's top channel) and a maintenance window ``start`` /
``end`` (ISO 8601; the incident starts inside it, by event time). ``min_readings`` mutes an incident until
it holds that many flagged readings, ``min_peak_ratio`` one whose peak score stays below that multiple of its
threshold: a minimum duration and a minimum deviation before anyone is paged.

:class:`SuppressionFile` looks at the file's modification time at most once a second and reloads it when it
changed; a file that does not parse keeps the rules in force and logs why.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from anomstream.errors import ConfigError

if TYPE_CHECKING:
    from anomstream.incidents import Incident

logger = logging.getLogger(__name__)

RULE_KEYS = {"device", "device_pattern", "channel", "start", "end", "reason"}
CHECK_EVERY_S = 1.0


@dataclass(frozen=True)
class Rule:
    """One muting rule (see the module docstring); ``None`` conditions always hold."""

    device: str | None = None
    device_pattern: str | None = None
    channel: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    reason: str = ""

    def matches(self, incident: Incident, top_channel: str | None) -> bool:
        if self.device is not None and incident.device_id != self.device:
            return False
        if self.device_pattern is not None and not fnmatch.fnmatchcase(incident.device_id, self.device_pattern):
            return False
        if self.channel is not None and top_channel != self.channel:
            return False
        if self.start_ms is not None and incident.start_ms < self.start_ms:
            return False
        return self.end_ms is None or incident.start_ms < self.end_ms

    def describe(self) -> str:
        named = {k: v for k, v in (("device", self.device), ("device_pattern", self.device_pattern),
                                   ("channel", self.channel)) if v is not None}  # fmt: skip
        window = "" if self.start_ms is None and self.end_ms is None else " in a maintenance window"
        what = ", ".join(f"{k}={v}" for k, v in named.items()) or "every incident"
        return f"rule {what}{window}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Suppression:
    """Rules, a minimum number of readings and a minimum peak-to-threshold ratio."""

    rules: tuple[Rule, ...] = ()
    min_readings: int = 1
    min_peak_ratio: float = 0.0

    def muted_by(self, incident: Incident, top_channel: str | None) -> str:
        """Why ``incident`` is muted, or ``""`` when it is not."""
        for rule in self.rules:
            if rule.matches(incident, top_channel):
                return rule.describe()
        if incident.readings < self.min_readings:
            return f"fewer than {self.min_readings} flagged readings"
        if incident.threshold > 0 and incident.peak_score < self.min_peak_ratio * incident.threshold:
            return f"peak below {self.min_peak_ratio:g} x the threshold"
        return ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Suppression:
        """Rules from the file's JSON object.

        Raises:
            ConfigError: unknown keys, bad times or values.
        """
        if not isinstance(data, dict):
            raise ConfigError("a suppression file holds one JSON object with 'rules'")
        unknown = set(data) - {"rules", "min_readings", "min_peak_ratio"}
        if unknown:
            raise ConfigError(f"unknown suppression settings {sorted(unknown)}")
        rules = []
        for i, raw in enumerate(data.get("rules", [])):
            if not isinstance(raw, dict) or set(raw) - RULE_KEYS:
                raise ConfigError(f"suppression rule {i}: use the keys {sorted(RULE_KEYS)}")
            rules.append(Rule(raw.get("device"), raw.get("device_pattern"), raw.get("channel"),
                              _epoch_ms(raw.get("start"), i), _epoch_ms(raw.get("end"), i),
                              str(raw.get("reason", ""))))  # fmt: skip
        try:
            min_readings, ratio = int(data.get("min_readings", 1)), float(data.get("min_peak_ratio", 0.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"suppression min_readings / min_peak_ratio: {exc}") from exc
        return cls(tuple(rules), min_readings, ratio)


def _epoch_ms(value: Any, index: int) -> int | None:
    if value is None:
        return None
    try:
        moment = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"suppression rule {index}: time {value!r} is not ISO 8601") from exc
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment
    return int(moment.value // 1_000_000)


class SuppressionFile:
    """The suppression in force, from ``path`` (``None``: nothing is muted), reloaded when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.current = Suppression()
        self._stamp: float | None = None
        self._checked = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> Suppression:
        """The suppression in force, after looking at the file if a second has passed."""
        if self.path is None or (not force and time.monotonic() - self._checked < CHECK_EVERY_S):
            return self.current
        self._checked = time.monotonic()
        try:
            stamp = self.path.stat().st_mtime
        except OSError as exc:
            if self._stamp is not None or force:
                logger.warning("suppression file %s cannot be read (%s): keeping %d rules", self.path, exc,
                               len(self.current.rules))  # fmt: skip
            self._stamp = None
            return self.current
        if stamp == self._stamp:
            return self.current
        self._stamp = stamp
        try:
            self.current = Suppression.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, ConfigError) as exc:
            logger.warning("suppression file %s not loaded (%s): keeping the rules in force", self.path, exc)
            return self.current
        logger.info("suppression from %s: %d rules, min %d readings, min peak ratio %g", self.path,
                    len(self.current.rules), self.current.min_readings, self.current.min_peak_ratio)  # fmt: skip
        return self.current
