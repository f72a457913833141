"""Per-device history: the last ``context`` good readings of every device the scorer owns.

A model's score for a reading depends on up to ``model.context`` earlier readings of the same device
(rolling features, windows, score smoothing, alarm hold). The scorer keeps those readings here, with their
detector scores once known, prepends them to each new batch (:meth:`DeviceHistory.with_history`), and drops
the history rows' results. Because the feature and smoothing code gives bit-identical results whatever the
batch start as long as each row's window is present, a reading scores the same whatever the batch
boundaries and whichever scorer owns its partition; and because a history row's detector score is passed
back to the model (``known_raw``), each reading goes through the detector once, not once per batch it
stays in history (with small batches and many devices, history rows would outnumber new ones).

History is kept per partition so that a revoked partition's devices are forgotten at once; it is rebuilt by
:mod:`anomstream.scoring.rebuild` when a partition is assigned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from anomstream.features import device_positions
from anomstream.telemetry import TelemetryBatch


def empty_batch(channels: tuple[str, ...]) -> TelemetryBatch:
    """A batch of no rows with ``channels``."""
    return TelemetryBatch(
        np.empty(0, dtype=object),
        np.empty(0, dtype=np.int64),
        np.empty(0, dtype=np.int64),
        channels,
        np.empty((0, len(channels))),
        np.empty(0, dtype=np.int8),
    )


def last_per_device(batch: TelemetryBatch, count: int) -> np.ndarray:
    """Boolean mask of each device's last ``count`` rows of ``batch`` (rows in arrival order)."""
    if count <= 0 or not len(batch):
        return np.zeros(len(batch), dtype=bool)
    position, total = device_positions(batch.device_id)
    return position >= total - count  # type: ignore[no-any-return]


class DeviceHistory:
    """The last ``context`` readings of each device, with the partition each came from.

    Args:
        context: readings kept per device (the model's ``context``; 0 keeps nothing).
        channels: the model's channels.
    """

    def __init__(self, context: int, channels: tuple[str, ...]) -> None:
        self.context = context
        self.rows = empty_batch(channels)
        self.partition = np.empty(0, dtype=np.int32)
        self.raw = np.empty(0)  # detector score of each row, NaN until known

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self, device_ids: np.ndarray) -> np.ndarray:
        """Readings held for each of ``device_ids``."""
        held = pd.Series(self.rows.device_id).value_counts()
        return held.reindex(pd.Index(device_ids, dtype=object), fill_value=0).to_numpy(dtype=np.int64)

    def with_history(self, batch: TelemetryBatch) -> tuple[TelemetryBatch, np.ndarray, np.ndarray]:
        """History rows of ``batch``'s devices followed by ``batch``.

        Returns:
            The combined rows; the positions in history of the leading history rows (for :meth:`remember`);
            and the known detector scores of the combined rows (NaN where unknown, e.g. for ``batch``).
        """
        unknown = np.full(len(batch), np.nan)
        if not self.context or not len(self.rows):
            return batch, np.zeros(0, dtype=np.int64), unknown
        used = np.flatnonzero(self._of_devices(batch.device_id))
        if not len(used):
            return batch, used, unknown
        return TelemetryBatch.concat([self.rows.take(used), batch]), used, np.concatenate([self.raw[used], unknown])

    def remember(self, used: np.ndarray, raw: np.ndarray) -> None:
        """Keep the detector scores computed for history rows ``used`` (those that were unknown)."""
        if len(used):
            self.raw[used] = raw

    def advance(self, batch: TelemetryBatch, partition: np.ndarray, raw: np.ndarray) -> None:
        """Take in scored rows (each device's rows in ``seq`` order) and their detector scores, keeping the
        last ``context`` rows per device."""
        if not self.context or not len(batch):
            return
        mine = self._of_devices(batch.device_id)
        merged = TelemetryBatch.concat([self.rows.take(mine), batch])
        merged_partition = np.concatenate([self.partition[mine], np.asarray(partition, dtype=np.int32)])
        merged_raw = np.concatenate([self.raw[mine], np.asarray(raw, dtype=np.float64)])
        keep = last_per_device(merged, self.context)
        self.rows = TelemetryBatch.concat([self.rows.take(~mine), merged.take(keep)])
        self.partition = np.concatenate([self.partition[~mine], merged_partition[keep]])
        self.raw = np.concatenate([self.raw[~mine], merged_raw[keep]])

    def absorb_older(self, older: TelemetryBatch, partition: np.ndarray) -> None:
        """Add readings that precede everything held (read back on assignment), oldest first."""
        if not self.context or not len(older):
            return
        merged = TelemetryBatch.concat([older, self.rows])
        merged_partition = np.concatenate([np.asarray(partition, dtype=np.int32), self.partition])
        merged_raw = np.concatenate([np.full(len(older), np.nan), self.raw])
        keep = last_per_device(merged, self.context)
        self.rows, self.partition, self.raw = merged.take(keep), merged_partition[keep], merged_raw[keep]

    def forget(self, partitions: set[int]) -> int:
        """Drop the devices of ``partitions``; return the rows dropped."""
        gone = np.isin(self.partition, list(partitions))
        self.rows, self.partition, self.raw = self.rows.take(~gone), self.partition[~gone], self.raw[~gone]
        return int(gone.sum())

    def _of_devices(self, device_ids: np.ndarray) -> np.ndarray:
        return pd.Index(self.rows.device_id, dtype=object).isin(pd.unique(device_ids))  # type: ignore[no-any-return]
