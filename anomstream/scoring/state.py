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

History has a memory budget (:meth:`DeviceHistory.evict`): beyond it, the devices seen least recently are
dropped, and each one's partition and the offset after its last reading are returned, so that the rebuilder
reads its readings back when the device shows up again: it then scores as if it had never been dropped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

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


ROW_BYTES = 120  # memory of a history row besides its values: id (a str of its own), seq, time, label, facts
BLOCK_BYTES = 64  # memory of a baseline block besides its sums and counts
EVICTED_BYTES = 160  # memory of an evicted device's entry: its id, partition and offset in a dict
EVICT_TO = 0.9  # an eviction brings history down to this share of its budget (so it does not run every batch)


@dataclass(frozen=True)
class _Facts:
    """Per history row: source partition and offset (-1: unknown), detector score (NaN until known), and the
    ``advance`` that took it in (how recently its device was seen)."""

    partition: np.ndarray
    offset: np.ndarray
    raw: np.ndarray
    seen: np.ndarray

    @classmethod
    def of(cls, partition: np.ndarray, offset: np.ndarray | None, raw: np.ndarray | None, seen: int) -> _Facts:
        n = len(partition)
        return cls(
            np.asarray(partition, dtype=np.int32),
            np.full(n, -1, dtype=np.int64) if offset is None else np.asarray(offset, dtype=np.int64),
            np.full(n, np.nan) if raw is None else np.asarray(raw, dtype=np.float64),
            np.full(n, seen, dtype=np.int64),
        )

    def take(self, rows: np.ndarray) -> _Facts:
        return _Facts(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(parts: list[_Facts]) -> _Facts:
        return _Facts(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Facts)))


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
        self.facts = _Facts.of(np.empty(0, dtype=np.int32), None, None, 0)
        self._tick = 0  # advances so far
        # devices evicted, oldest first: partition and the offset after the last reading, to read them back
        self.evicted: dict[str, tuple[int, int]] = {}
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
        return (
            TelemetryBatch.concat([self.rows.take(used), batch]),
            used,
            np.concatenate([self.facts.raw[used], unknown]),
        )

    def forget_scores(self) -> None:
        """Drop the detector scores of the rows held (another model serves now): the next batch scores the
        rows again with the new model, so that its first readings score as the new model's offline pass."""
        self.facts.raw[:] = np.nan

    def remember(self, used: np.ndarray, raw: np.ndarray) -> None:
        """Keep the detector scores computed for history rows ``used`` (those that were unknown)."""
        if len(used):
            self.facts.raw[used] = raw

    def advance(
        self, batch: TelemetryBatch, partition: np.ndarray, raw: np.ndarray, offset: np.ndarray | None = None
    ) -> None:
        """Take in scored rows (each device's rows in ``seq`` order), their source partitions, detector scores
        and source offsets (None: unknown, the device cannot be read back once evicted), keeping the last
        ``context`` rows per device."""
        self._tick += 1
        if not self.context or not len(batch):
            return
        mine = self._of_devices(batch.device_id)
        merged = TelemetryBatch.concat([self.rows.take(mine), batch])
        merged_facts = _Facts.concat([self.facts.take(mine), _Facts.of(partition, offset, raw, self._tick)])
        keep = last_per_device(merged, self.context)
        self._hold(TelemetryBatch.concat([self.rows.take(~mine), merged.take(keep)]),
                   _Facts.concat([self.facts.take(~mine), merged_facts.take(keep)]))  # fmt: skip
        if self.blocks is not None:
            self.blocks = fold_blocks(self.blocks, batch.device_id, batch.seq, batch.values, partition,
                                      self.baseline_step, self.reach)  # fmt: skip

    def absorb_older(self, older: TelemetryBatch, partition: np.ndarray, offset: np.ndarray | None = None) -> None:
        """Add readings that precede everything held of their devices (read back), oldest first."""
        if not self.context or not len(older):
            return
        merged = TelemetryBatch.concat([older, self.rows])
        merged_facts = _Facts.concat([_Facts.of(partition, offset, None, self._tick), self.facts])
        keep = last_per_device(merged, self.context)
        if self.blocks is not None:
            self.blocks = self._blocks_with_older(self.blocks, older, merged, merged_facts.partition)
        self._hold(merged.take(keep), merged_facts.take(keep))

    def forget(self, partitions: set[int]) -> int:
        """Drop the devices of ``partitions``; return the rows dropped."""
        gone = np.isin(self.facts.partition, list(partitions))
        self._hold(self.rows.take(~gone), self.facts.take(~gone))
        self.evicted = {d: place for d, place in self.evicted.items() if place[0] not in partitions}
        if self.blocks is not None:
            self.blocks = self.blocks.take(~np.isin(self.blocks.partition, list(partitions)))
        return int(gone.sum())

    @property
    def nbytes(self) -> int:
        """Memory held, estimated: rows with their values, the baseline's blocks, the evicted devices' entries."""
        width = len(self.rows.channels)
        blocks = 0 if self.blocks is None else len(self.blocks) * (BLOCK_BYTES + 16 * width)
        return len(self.rows) * (ROW_BYTES + 8 * width) + blocks + len(self.evicted) * EVICTED_BYTES

    def evict(self, budget_bytes: float) -> int:
        """Beyond ``budget_bytes``, drop the devices seen least recently until history holds ``EVICT_TO`` of the
        budget; return how many were dropped.

        Each dropped device is remembered in :attr:`evicted` (its partition, and the offset after its last
        reading) so that the rebuilder reads it back when it returns. Those entries count in the budget too: when
        they alone exceed it, the oldest are forgotten, and such a device, if it ever returns, starts afresh.
        """
        held = self.nbytes
        if held <= budget_bytes or not len(self.rows):
            return 0
        target = EVICT_TO * budget_bytes
        frame = pd.DataFrame({"device": self.rows.device_id, "seen": self.facts.seen,
                              "partition": self.facts.partition, "offset": self.facts.offset})  # fmt: skip
        per_device = frame.groupby("device", sort=False).agg(
            seen=("seen", "max"), partition=("partition", "last"), offset=("offset", "max"), rows=("seen", "size")
        )
        per_device = per_device.sort_values("seen", kind="stable")  # a budget too small for one batch's
        # devices evicts some of them too (a churning fleet's devices are seen once): correct, but those that
        # come back are read back each time
        share = (held - len(self.evicted) * EVICTED_BYTES) / len(self.rows)  # a row's share, blocks included
        freed = np.cumsum(per_device["rows"].to_numpy() * share - EVICTED_BYTES)
        count = min(int(np.searchsorted(freed, held - target)) + 1, len(per_device))
        gone = per_device.iloc[:count]
        devices = gone.index.to_numpy(dtype=object)
        drop = pd.Index(self.rows.device_id, dtype=object).isin(devices)
        self._hold(self.rows.take(~drop), self.facts.take(~drop))
        if self.blocks is not None:
            self.blocks = self.blocks.take(~self.blocks.of_devices(devices))
        for device, partition, last in zip(devices, gone["partition"], gone["offset"], strict=True):
            if last >= 0:  # offsets known: it can be read back
                self.evicted[str(device)] = (int(partition), int(last) + 1)
        excess = int(np.ceil(max(self.nbytes - target, 0) / EVICTED_BYTES))
        for device in list(itertools.islice(self.evicted, min(excess, len(self.evicted)))):
            del self.evicted[device]
        return count

    def returning(self, device_ids: np.ndarray) -> dict[str, tuple[int, int]]:
        """The evicted devices among ``device_ids``, with their partitions and the offsets after their last
        readings (see :meth:`returned`)."""
        return {str(d): self.evicted[str(d)] for d in pd.unique(device_ids) if str(d) in self.evicted}

    def returned(self, devices: dict[str, tuple[int, int]]) -> None:
        """The evicted ``devices`` were read back."""
        for device in devices:
            self.evicted.pop(device, None)

    def _hold(self, rows: TelemetryBatch, facts: _Facts) -> None:
        self.rows, self.facts, self._device_count = rows, facts, None

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
