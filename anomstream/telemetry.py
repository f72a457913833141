"""The in-memory shape of telemetry: a columnar batch of readings, and of the anomalies flagged in it.

Sources (CSV replay, the synthetic fleet) produce it, the producer encodes it, the trainer and the scorer
decode into it. Columns are numpy arrays of one length ``n``; channels are a dense ``(n, C)`` float matrix
whose column names are ``channels`` (a missing reading is NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_LABEL = -1  # label value for "unknown" (the Avro field is null)


@dataclass(frozen=True)
class TelemetryBatch:
    """Readings of one or many devices, in arrival order.

    Attributes:
        device_id: ``(n,)`` object array of device id strings.
        event_time_ms: ``(n,)`` int64, milliseconds since the Unix epoch (UTC).
        seq: ``(n,)`` int64, per-device sequence number starting at 0.
        channels: the names of the value columns, in order.
        values: ``(n, C)`` float64; NaN where a channel is missing.
        label: ``(n,)`` int8 ground truth: 1 anomalous, 0 normal, ``NO_LABEL`` unknown.
    """

    device_id: np.ndarray
    event_time_ms: np.ndarray
    seq: np.ndarray
    channels: tuple[str, ...]
    values: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.device_id)
        for name in ("event_time_ms", "seq", "label"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"TelemetryBatch column {name} has {len(getattr(self, name))} rows, not {n}")
        if self.values.shape != (n, len(self.channels)):
            raise ValueError(f"TelemetryBatch values shape {self.values.shape} != ({n}, {len(self.channels)})")

    def __len__(self) -> int:
        return len(self.device_id)

    def take(self, index: np.ndarray | slice) -> TelemetryBatch:
        """Rows selected by a slice, an integer index array or a boolean mask."""
        return TelemetryBatch(
            device_id=self.device_id[index],
            event_time_ms=self.event_time_ms[index],
            seq=self.seq[index],
            channels=self.channels,
            values=self.values[index],
            label=self.label[index],
        )

    @staticmethod
    def concat(batches: list[TelemetryBatch]) -> TelemetryBatch:
        """One batch from many with the same channels, in the given order."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        channels = batches[0].channels
        for b in batches[1:]:
            if b.channels != channels:
                raise ValueError(f"cannot concat batches with channels {channels} and {b.channels}")
        return TelemetryBatch(
            device_id=np.concatenate([b.device_id for b in batches]),
            event_time_ms=np.concatenate([b.event_time_ms for b in batches]),
            seq=np.concatenate([b.seq for b in batches]),
            channels=channels,
            values=np.concatenate([b.values for b in batches]),
            label=np.concatenate([b.label for b in batches]),
        )


SCORED_BY_DEVICE, SCORED_BY_GLOBAL = "device", "global"  # which detector scored an anomaly


@dataclass(frozen=True)
class AnomalyColumns:
    """Flagged readings, one row each, for :func:`encode_anomalies` (fields of ``schemas/anomaly.avsc``).

    Per-row columns are arrays of one length ``n``; ``threshold`` and ``scored_at_ms`` may also be scalars.

    Attributes:
        device_id: ``(n,)`` object array of str.
        event_time_ms: ``(n,)`` int64 event time of the reading.
        seq: ``(n,)`` int64 the reading's sequence number.
        score: ``(n,)`` float64, higher is more anomalous.
        threshold: the calibrated threshold (scalar or ``(n,)``).
        model: model name.
        model_version: model version.
        channels: names of the contribution columns.
        contributions: ``(n, C)`` float64 per-channel share of the score; NaN entries are left out.
        source_topic: topic the readings came from.
        source_partition: ``(n,)`` int partition of each reading.
        source_offset: ``(n,)`` int64 offset of each reading.
        label: ``(n,)`` int8 ground truth of the input, ``NO_LABEL`` for none.
        scored_at_ms: when the scorer flagged them (scalar or ``(n,)``, epoch ms).
        scored_by: ``(n,)`` object array, ``"device"`` (the device's own detector) or ``"global"``.
        observed: ``(n, C)`` the readings of ``channels``; None for none.
        expected: ``(n, C)`` per channel the level the reading was judged against; None for none.
    """

    device_id: np.ndarray
    event_time_ms: np.ndarray
    seq: np.ndarray
    score: np.ndarray
    threshold: np.ndarray | float
    model: str
    model_version: int
    channels: tuple[str, ...]
    contributions: np.ndarray
    source_topic: str
    source_partition: np.ndarray
    source_offset: np.ndarray
    label: np.ndarray
    scored_at_ms: np.ndarray | int
    scored_by: np.ndarray | None = None  # None: all "global"
    observed: np.ndarray | None = None
    expected: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.device_id)
