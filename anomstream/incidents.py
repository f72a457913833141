"""Incidents: a device's alarm as one thing, with a start, an end, a peak and the channels behind it.

A flagged reading is one record on the anomaly topic; a fault is many of them (the alarm hold alone makes
every alarm at least ``hold`` readings long). An incident gathers them: per device it **opens** at the first
flagged reading, takes in every flagged reading that follows within the quiet time, and **closes** once the
device has sent readings for the quiet time (event time) without a flagged one. Its events go to the
incident topic, keyed by device: ``open`` (in the batch where it starts), ``update`` (in each later batch that
adds flagged readings) and ``closed``; each carries the incident's whole state so far, so the last event of
an incident says everything about it, and the last event of every device is all a scorer needs to go on
after a rebalance or a restart (:meth:`IncidentTracker.restore`).

Everything here is pure: :meth:`IncidentTracker.step` turns one batch into events and the next state without
changing the tracker, so that the scorer applies the state only once the batch's transaction has committed.
Events depend only on the readings, not on where batches start, except how many ``update`` events an
incident gets: the incidents themselves (id, start, end, readings, peak) are those of an offline pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from anomstream.suppression import Suppression
from anomstream.telemetry import AnomalyColumns

OPEN, UPDATE, CLOSED = "open", "update", "closed"
DEFAULT_QUIET_S = 300.0  # as Alertmanager's resolve_timeout: an alarm quiet for 5 minutes has ended
TOP_CHANNELS = 3


@dataclass(frozen=True)
class Incident:
    """The state of one incident (see the incident schema, ``schemas/incident.avsc``)."""

    incident_id: str
    device_id: str
    start_ms: int
    end_ms: int
    readings: int
    peak_score: float
    peak_ms: int
    threshold: float
    model: str
    model_version: int
    contributions: tuple[float, ...]
    source_partition: int
    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int

    def top_channels(self, channels: tuple[str, ...]) -> list[str]:
        """Channels by summed contribution, largest first (at most ``TOP_CHANNELS``)."""
        sums = dict(zip(channels, self.contributions, strict=True))
        return sorted(sums, key=lambda name: -sums[name])[:TOP_CHANNELS]

    def record(
        self, state: str, channels: tuple[str, ...], topic: str, quiet_ms: int, muted_by: str = ""
    ) -> dict[str, Any]:
        """The incident's event as an Avro record (a dict of the incident schema's fields)."""
        sums = dict(zip(channels, self.contributions, strict=True))
        top = self.top_channels(channels)
        return {
            "incident_id": self.incident_id, "state": state, "device_id": self.device_id,
            "start_time": self.start_ms, "end_time": self.end_ms, "readings": self.readings,
            "peak_score": self.peak_score, "peak_time": self.peak_ms, "threshold": self.threshold,
            "model": self.model, "model_version": self.model_version, "contributions": sums,
            "top_channels": top, "source_topic": topic, "source_partition": self.source_partition,
            "first_seq": self.first_seq, "last_seq": self.last_seq, "first_offset": self.first_offset,
            "last_offset": self.last_offset, "quiet_ms": quiet_ms, "muted": bool(muted_by), "muted_by": muted_by,
        }  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any], channels: tuple[str, ...]) -> Incident:
        """The state an event carries (timestamps as epoch ms or aware datetimes)."""
        sums = record["contributions"]
        return cls(
            record["incident_id"], record["device_id"], _ms(record["start_time"]), _ms(record["end_time"]),
            int(record["readings"]), float(record["peak_score"]), _ms(record["peak_time"]),
            float(record["threshold"]), record["model"], int(record["model_version"]),
            tuple(float(sums.get(c, 0.0)) for c in channels), int(record["source_partition"]),
            int(record["first_seq"]), int(record["last_seq"]), int(record["first_offset"]),
            int(record["last_offset"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """What one batch did to the incidents: the events to write (in order) and the state after it."""

    events: list[dict[str, Any]]
    open: dict[str, Incident]
    opened: int
    closed: int
    muted: int = 0  # events of muted incidents


class IncidentTracker:
    """The open incident of each device, and the rule that turns flagged readings into incident events.

    Args:
        channels: the model's channels (the order of ``AnomalyColumns.contributions``).
        quiet_ms: event time without a flagged reading after which a device's incident closes.
        topic: the source topic named in the events.
        suppression: what mutes incidents (:mod:`anomstream.suppression`); the scorer refreshes it.
    """

    def __init__(
        self, channels: tuple[str, ...], quiet_ms: int, topic: str, suppression: Suppression | None = None
    ) -> None:
        self.channels, self.quiet_ms, self.topic = channels, quiet_ms, topic
        self.suppression = suppression or Suppression()
        self.open: dict[str, Incident] = {}

    def step(self, anomalies: AnomalyColumns, device_id: np.ndarray, event_time_ms: np.ndarray) -> Step:
        """The events of one batch: its flagged readings (``anomalies``) and the device and event time of
        every reading scored (``device_id``, ``event_time_ms``: quiet readings close incidents too)."""
        state = dict(self.open)
        events: list[dict[str, Any]] = []
        touched: dict[str, bool] = {}  # device -> its current incident opened in this batch
        opened = closed = 0
        order = np.lexsort((anomalies.seq, anomalies.device_id.astype(str))) if len(anomalies) else np.zeros(0, int)
        threshold = np.broadcast_to(anomalies.threshold, (len(anomalies),))
        for i in order:
            device, t = str(anomalies.device_id[i]), int(anomalies.event_time_ms[i])
            current = state.get(device)
            if current is not None and t - current.end_ms > self.quiet_ms:
                events += self._closing(current, touched.pop(device, None))
                closed += 1
                current = None
            score = float(anomalies.score[i])
            share = np.nan_to_num(anomalies.contributions[i])
            if current is None:
                current = Incident(
                    f"{device}/{int(anomalies.seq[i])}", device, t, t, 1, score, t, float(threshold[i]),
                    anomalies.model, anomalies.model_version, tuple(float(x) for x in share),
                    int(anomalies.source_partition[i]), int(anomalies.seq[i]), int(anomalies.seq[i]),
                    int(anomalies.source_offset[i]), int(anomalies.source_offset[i]),
                )  # fmt: skip
                touched[device] = True
                opened += 1
            else:
                peak = score > current.peak_score
                current = replace(
                    current, end_ms=t, readings=current.readings + 1,
                    peak_score=score if peak else current.peak_score, peak_ms=t if peak else current.peak_ms,
                    contributions=tuple(a + float(b) for a, b in zip(current.contributions, share, strict=True)),
                    last_seq=int(anomalies.seq[i]), last_offset=int(anomalies.source_offset[i]),
                )  # fmt: skip
                touched.setdefault(device, False)
            state[device] = current
        for device, new in touched.items():
            events.append(self._event(state[device], OPEN if new else UPDATE))
        # Readings without a flag close what has been quiet long enough by the device's latest reading.
        for device, latest in _latest_per_device(device_id, event_time_ms, state).items():
            current = state[device]
            if latest - current.end_ms > self.quiet_ms:
                events.append(self._event(current, CLOSED))
                del state[device]
                closed += 1
        return Step(events, state, opened, closed, sum(e["muted"] for e in events))

    def apply(self, step: Step) -> None:
        """Take the state after a batch whose events were committed."""
        self.open = step.open

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Take up the last event of each device (read back from the incident topic); return how many
        incidents are open again."""
        restored = 0
        for record in records:
            device = record["device_id"]
            if record["state"] == CLOSED:
                self.open.pop(device, None)
            else:
                self.open[device] = Incident.from_record(record, self.channels)
                restored += 1
        return restored

    def forget(self, partitions: set[int]) -> None:
        """Drop the incidents of devices read from ``partitions`` (revoked)."""
        self.open = {d: i for d, i in self.open.items() if i.source_partition not in partitions}

    def _closing(self, incident: Incident, opened_in_batch: bool | None) -> list[dict[str, Any]]:
        """Events for an incident that closes mid-batch: its ``open`` first when it also opened in it."""
        before = [self._event(incident, OPEN)] if opened_in_batch else []
        return [*before, self._event(incident, CLOSED)]

    def _event(self, incident: Incident, state: str) -> dict[str, Any]:
        top = incident.top_channels(self.channels)
        muted_by = self.suppression.muted_by(incident, top[0] if top else None)
        return incident.record(state, self.channels, self.topic, self.quiet_ms, muted_by)


def _latest_per_device(device_id: np.ndarray, event_time_ms: np.ndarray, open_: dict[str, Incident]) -> dict[str, int]:
    """The latest event time in the batch of each device with an open incident."""
    if not open_ or not len(device_id):
        return {}
    mine = pd.Index(device_id, dtype=object).isin(list(open_))
    if not mine.any():
        return {}
    latest = pd.Series(np.asarray(event_time_ms)[mine]).groupby(np.asarray(device_id, dtype=object)[mine]).max()
    return {str(d): int(t) for d, t in latest.items()}


def _ms(value: Any) -> int:
    """Epoch milliseconds of an int or an aware datetime (how fastavro reads timestamp-millis)."""
    if isinstance(value, int | np.integer):
        return int(value)
    return int(round(value.timestamp() * 1000))


def offline_incidents(
    tracker: IncidentTracker, anomalies: AnomalyColumns, device_id: np.ndarray, event_time_ms: np.ndarray
) -> dict[str, dict[str, Any]]:
    """The last event of every incident when the whole stream is one batch: what a streaming scorer's
    incidents must equal."""
    last: dict[str, dict[str, Any]] = {}
    for event in tracker.step(anomalies, device_id, event_time_ms).events:
        last[event["incident_id"]] = event
    return last


def incidents_of_flags(
    device_id: np.ndarray, event_time_ms: np.ndarray, seq: np.ndarray, flagged: np.ndarray, score: np.ndarray,
    threshold: np.ndarray, quiet_ms: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """The incidents (last event of each) an offline pass over scored readings gives, for evaluation and
    plots: flags and scores are enough (contributions are not summed)."""
    rows = np.flatnonzero(flagged)
    anomalies = AnomalyColumns(
        device_id=np.asarray(device_id)[rows], event_time_ms=np.asarray(event_time_ms)[rows],
        seq=np.asarray(seq)[rows], score=np.asarray(score)[rows], threshold=np.asarray(threshold)[rows],
        model="", model_version=0, channels=("score",), contributions=np.ones((len(rows), 1)), source_topic="",
        source_partition=np.zeros(len(rows), dtype=np.int32), source_offset=rows.astype(np.int64),
        label=np.zeros(len(rows), dtype=np.int8), scored_at_ms=0,
    )  # fmt: skip
    tracker = IncidentTracker(("score",), quiet_ms, "")
    return list(offline_incidents(tracker, anomalies, np.asarray(device_id), np.asarray(event_time_ms)).values())
