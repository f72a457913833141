"""Scoring a decoded batch: history prepended, the whole batch in one model call, flagged rows as anomalies.

Pure (no Kafka): the same function serves the scorer and the tests that compare it with offline scoring.
Per-channel contributions come from the model (:meth:`AnomalyModel.score`): for the autoencoders each
channel's share of the reconstruction error, for the Isolation Forest each channel's share of the path
shortening its splits caused (see :mod:`anomstream.detectors.iforest`); shares sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomstream.model import AnomalyModel
from anomstream.scoring.state import DeviceHistory
from anomstream.telemetry import SCORED_BY_DEVICE, SCORED_BY_GLOBAL, AnomalyColumns, TelemetryBatch


@dataclass(frozen=True)
class ScoredBatch:
    """What one batch scored to.

    Attributes:
        anomalies: the flagged readings, ready to encode.
        scored: how many readings were scored.
        raw: ``(scored,)`` detector scores of the readings (for :meth:`DeviceHistory.advance`).
        warming_up: readings scored while their device's windows fill (never flagged).
    """

    anomalies: AnomalyColumns
    scored: int
    raw: np.ndarray
    warming_up: int = 0


def score_batch(
    model: AnomalyModel,
    model_name: str,
    model_version: int,
    history: DeviceHistory,
    batch: TelemetryBatch,
    topic: str,
    partition: np.ndarray,
    offset: np.ndarray,
    scored_at_ms: int,
) -> ScoredBatch:
    """Score ``batch`` (good readings, each device's in ``seq`` order) after its devices' history.

    Args:
        model: the serving model.
        model_name: its name in the store.
        model_version: its version.
        history: per-device history (only the detector scores of its rows are filled in here).
        batch: the readings to score.
        topic: the topic they came from.
        partition: ``(n,)`` source partition of each reading.
        offset: ``(n,)`` source offset of each reading.
        scored_at_ms: the ``scored_at`` stamp.
    """
    combined, used, known_raw = history.with_history(batch)
    result = model.score(combined, explain="flagged", known_raw=known_raw, baseline=history.blocks)
    lead = len(used)
    history.remember(used, result.raw_score[:lead])
    flagged = np.flatnonzero(result.flagged[lead:])
    rows = flagged + lead
    anomalies = AnomalyColumns(
        device_id=batch.device_id[flagged],
        event_time_ms=batch.event_time_ms[flagged],
        seq=batch.seq[flagged],
        score=result.score[rows],
        threshold=result.threshold[rows],
        model=model_name,
        model_version=model_version,
        channels=model.channels,
        contributions=result.contributions[rows],
        source_topic=topic,
        source_partition=np.asarray(partition)[flagged],
        source_offset=np.asarray(offset)[flagged],
        label=batch.label[flagged],
        scored_at_ms=scored_at_ms,
        scored_by=np.where(result.own_model[rows], SCORED_BY_DEVICE, SCORED_BY_GLOBAL).astype(object),
        observed=batch.values[flagged][:, [batch.channels.index(c) for c in model.channels]],
        expected=result.expected[rows],
    )
    return ScoredBatch(anomalies, len(batch), result.raw_score[lead:], int(result.warming_up[lead:].sum()))
