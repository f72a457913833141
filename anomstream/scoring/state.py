"""Per-device history: the last good readings of every device the scorer owns, and its slow-baseline blocks.

A model's score for a reading depends on up to ``model.context`` earlier readings of the same device
(rolling features, windows, score smoothing, alarm hold, the slow baseline). The scorer keeps the last
``model.warm_up`` of them here as rows, with their detector scores once known, prepends them to each new
batch (:meth:`DeviceHistory.with_history`), and drops the history rows' results; the older ones it keeps only
as the slow baseline's block sums (:class:`anomstream.features.BlockSums`), a few numbers per block of
readings, so that a batch costs the same whatever the baseline's length.

Because the feature and smoothing code gives bit-identical results whatever the
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

from anomstream.features import BlockSums, device_positions, fold_blocks
from anomstream.model import AnomalyModel
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
    """The last ``context`` readings of each device, with the partition each came from, and the slow
    baseline's blocks of the readings before them.

    Args:
        context: readings kept per device as rows (the model's ``warm_up``; 0 keeps nothing).
        channels: the model's channels.
        reach: readings a score depends on (the model's ``context``): what a rebuild reads back; default
            ``context``.
        baseline_step: readings per slow-baseline block (0: the model has no slow baseline).
    """

    def __init__(
        self, context: int, channels: tuple[str, ...], reach: int | None = None, baseline_step: int = 0
    ) -> None:
        self.context = context
        self.reach = context if reach is None else reach
        self.rows = empty_batch(channels)
        self.partition = np.empty(0, dtype=np.int32)
        self.raw = np.empty(0)  # detector score of each row, NaN until known
        self.baseline_step = baseline_step
        self.blocks: BlockSums | None = BlockSums.empty(len(channels)) if baseline_step else None
        self._device_count: int | None = 0  # None: count again

    @classmethod
    def for_model(cls, model: AnomalyModel) -> DeviceHistory:
        """The history ``model`` needs: its ``warm_up`` readings as rows, the slow baseline as blocks."""
        return cls(model.warm_up, model.channels, model.context, model.baseline_step)

    def fits(self, model: AnomalyModel) -> bool:
        """Whether this history holds what ``model`` needs (a model swap keeps it then)."""
        mine = (self.context, self.reach, self.baseline_step, self.rows.channels)
        return mine == (model.warm_up, model.context, model.baseline_step, model.channels)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device_count(self) -> int:
        """Devices with rows held."""
        if self._device_count is None:
            self._device_count = len(pd.unique(self.rows.device_id))
        return self._device_count

    def counts(self, device_ids: np.ndarray) -> np.ndarray:
        """Readings held for each of ``device_ids``, as rows or in the baseline's blocks."""
        index = pd.Index(device_ids, dtype=object)
        held = pd.Series(self.rows.device_id).value_counts().reindex(index, fill_value=0).to_numpy(dtype=np.int64)
        if self.blocks is None or not len(self.blocks):
            return held  # type: ignore[no-any-return]
        frame = pd.DataFrame({"device": self.blocks.device_id, "last": self.blocks.last, "since": self.blocks.since})
        spans = frame.groupby("device").agg(last=("last", "max"), since=("since", "min"))
        summed = (spans["last"] - spans["since"] + 1).reindex(index, fill_value=0).to_numpy(dtype=np.int64)
        return np.maximum(held, summed)  # type: ignore[no-any-return]

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

    def forget_scores(self) -> None:
        """Drop the detector scores of the rows held (another model serves now): the next batch scores the
        rows again with the new model, so that its first readings score as the new model's offline pass."""
        self.raw = np.full(len(self.rows), np.nan)

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
        self._device_count = None
        self.partition = np.concatenate([self.partition[~mine], merged_partition[keep]])
        self.raw = np.concatenate([self.raw[~mine], merged_raw[keep]])
        if self.blocks is not None:
            self.blocks = fold_blocks(self.blocks, batch.device_id, batch.seq, batch.values, partition,
                                      self.baseline_step, self.reach)  # fmt: skip

    def absorb_older(self, older: TelemetryBatch, partition: np.ndarray) -> None:
        """Add readings that precede everything held (read back on assignment), oldest first."""
        if not self.context or not len(older):
            return
        merged = TelemetryBatch.concat([older, self.rows])
        merged_partition = np.concatenate([np.asarray(partition, dtype=np.int32), self.partition])
        merged_raw = np.concatenate([np.full(len(older), np.nan), self.raw])
        keep = last_per_device(merged, self.context)
        if self.blocks is not None:
            self.blocks = self._blocks_with_older(self.blocks, older, merged, merged_partition)
        self.rows, self.partition, self.raw = merged.take(keep), merged_partition[keep], merged_raw[keep]
        self._device_count = None

    def forget(self, partitions: set[int]) -> int:
        """Drop the devices of ``partitions``; return the rows dropped."""
        gone = np.isin(self.partition, list(partitions))
        self.rows, self.partition, self.raw = self.rows.take(~gone), self.partition[~gone], self.raw[~gone]
        self._device_count = None
        if self.blocks is not None:
            self.blocks = self.blocks.take(~np.isin(self.blocks.partition, list(partitions)))
        return int(gone.sum())

    def _blocks_with_older(
        self, blocks: BlockSums, older: TelemetryBatch, merged: TelemetryBatch, partition: np.ndarray
    ) -> BlockSums:
        """The blocks rebuilt over ``older`` readings and the rows held, for the devices of ``older``.

        A device's sums must be added in ``seq`` order, so they are rebuilt from its rows; a device whose
        blocks already sum readings no longer held as rows (it was scored, then found short: a read-back
        that could not reach far enough) keeps its blocks, and its baseline lacks the older readings.
        """
        devices = pd.unique(older.device_id)
        blocks_of = blocks.of_devices(devices)
        held = self.rows.take(pd.Index(self.rows.device_id, dtype=object).isin(devices))
        first_held = pd.Series(held.seq).groupby(pd.Index(held.device_id, dtype=object)).min()
        since = pd.Series(blocks.since[blocks_of]).groupby(pd.Index(blocks.device_id[blocks_of], dtype=object)).min()
        stuck = since.index[since.to_numpy() < first_held.reindex(since.index, fill_value=-1).to_numpy()]
        rebuilt = pd.Index(devices, dtype=object).difference(stuck)
        rows = pd.Index(merged.device_id, dtype=object).isin(rebuilt)
        fresh = fold_blocks(BlockSums.empty(len(merged.channels)), merged.device_id[rows], merged.seq[rows],
                            merged.values[rows], partition[rows], self.baseline_step, self.reach)  # fmt: skip
        return BlockSums.concat([blocks.take(~blocks.of_devices(rebuilt)), fresh])

    def _of_devices(self, device_ids: np.ndarray) -> np.ndarray:
        return pd.Index(self.rows.device_id, dtype=object).isin(pd.unique(device_ids))  # type: ignore[no-any-return]
