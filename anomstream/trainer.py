"""The trainer: read a window of the telemetry topic, fit a model, evaluate it on a later window, publish it.

Windows, by event time or by record count:

- ``train_start``/``train_end`` (and optionally ``eval_end``): training rows have ``train_start <= event
  time < train_end``, evaluation rows ``train_end <= event time < eval_end`` (to the end of the topic
  without ``eval_end``). Reading starts at ``offsets_for_times(train_start)``.
- ``train_records`` N: each device's first N records from the start of the topic train, the rest of the
  topic evaluates. A device's rows are in ``seq`` order, so "first N" is exactly the first N readings it
  sent: the rows ``anomstream eval skab`` trains on for a SKAB file replayed by ``anomstream produce``.

Either way the topic is read up to the high watermarks captured when training starts
(:mod:`anomstream.topic_window`), so what is read does not depend on timing, and the run ends by itself.
Fitting is one ``AnomalyModel.fit`` call on the training rows; evaluation scores the training and
evaluation rows together (so the first evaluation rows have their history) and measures the evaluation
rows only. The model, its manifest (windows with per-partition offsets, metrics) and the report go to the
model store, which decides with the promotion gate whether it becomes current; the result is announced
on the ``models`` topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from anomstream import evaluation
from anomstream.alarms import incident_quality
from anomstream.config import KafkaSettings, TopicSettings, env
from anomstream.errors import AnomstreamError, ModelError
from anomstream.features import device_positions
from anomstream.incidents import incidents_of_flags
from anomstream.model import DEFAULT_TARGET_FAR, AnomalyModel
from anomstream.model_store import PROMOTE_MODES, ModelStore, PublishResult, announce
from anomstream.telemetry import NO_LABEL, TelemetryBatch
from anomstream.topic_window import TopicRead, read_topic

logger = logging.getLogger(__name__)

DETECTORS = ("iforest", "dense-ae", "conv-ae", "pca")
PROBE_ROWS = 2_000  # rows the reloaded model must score exactly as the fitted one before publication


class TrainSettings(BaseSettings):
    """What `anomstream train` fits, on which windows, and how it is published."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    name: str | None = env("ANOMSTREAM_MODEL_NAME", None, "model name in the store (default: the detector's name)")
    model: Literal["iforest", "dense-ae", "conv-ae", "pca"] = env("ANOMSTREAM_TRAIN_MODEL", "iforest", "detector")
    per_device: bool = env("ANOMSTREAM_TRAIN_PER_DEVICE", False, "one detector per device, global one as fallback")
    seed: int = env("ANOMSTREAM_TRAIN_SEED", 0, "random seed: the same data and seed give the same model")
    jobs: int = env(
        "ANOMSTREAM_TRAIN_JOBS", -1, "worker processes for the per-device fits (-1: one per core; same models)", ge=-1
    )
    cluster: str | None = env(
        "ANOMSTREAM_TRAIN_CLUSTER",
        None,
        "Dask scheduler address (tcp://HOST:PORT): the per-device fits run on its workers (same models)",
    )
    train_start: datetime | None = env(
        "ANOMSTREAM_TRAIN_START", None, "training window start, ISO 8601 event time (UTC when no zone is given)"
    )
    train_end: datetime | None = env(
        "ANOMSTREAM_TRAIN_END", None, "training window end (exclusive), where the evaluation window starts"
    )
    eval_end: datetime | None = env(
        "ANOMSTREAM_EVAL_END", None, "evaluation window end (exclusive); default: the end of the topic"
    )
    train_records: int | None = env(
        "ANOMSTREAM_TRAIN_RECORDS",
        None,
        "instead of times: each device's first N records train, the rest evaluate",
        ge=1,
    )
    target_far: float = env(
        "ANOMSTREAM_TARGET_FAR",
        DEFAULT_TARGET_FAR,
        "fraction of normal readings the threshold may flag, calibrated on held-back training readings",
        gt=0,
        lt=0.5,
    )
    params: dict[str, Any] = env("ANOMSTREAM_TRAIN_PARAMS", {}, "model and detector parameter overrides, as JSON")
    incident_quiet: float = env(
        "ANOMSTREAM_INCIDENT_QUIET_S", 300.0, "incident quiet time (s) for the evaluation's incidents, as the scorer's",
        gt=0,
    )
    promote: Literal["auto", "always", "never"] = env(
        "ANOMSTREAM_PROMOTE", "auto", "auto: make current unless worse than the current version; always; never"
    )
    read_timeout: float = env(
        "ANOMSTREAM_TRAIN_READ_TIMEOUT", 30.0, "seconds without progress before reading the topic gives up", gt=0
    )
    client_id: str = env("ANOMSTREAM_TRAINER_CLIENT_ID", "anomstream-trainer", "Kafka client.id")

    @model_validator(mode="after")
    def _one_kind_of_window(self) -> TrainSettings:
        if self.train_records is not None:
            if self.train_start or self.train_end or self.eval_end:
                raise ValueError("give --train-records or --train-start/--train-end/--eval-end, not both")
            return self
        if self.train_end is None:
            raise ValueError("give --train-end (with an optional --train-start and --eval-end) or --train-records N")
        bounds = [t for t in (self.train_start, self.train_end, self.eval_end) if t is not None]
        if any(_ms(a) >= _ms(b) for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError("the windows need --train-start < --train-end < --eval-end")
        return self

    @property
    def model_name(self) -> str:
        """The name in the store."""
        return self.name or self.model


@dataclass(frozen=True)
class TrainingWindows:
    """The rows of a read that train and that evaluate, and how the windows were chosen."""

    read: TopicRead
    train: np.ndarray
    evaluate: np.ndarray
    train_bounds: dict[str, Any]
    eval_bounds: dict[str, Any]

    def describe(self, mask: np.ndarray, bounds: dict[str, Any]) -> dict[str, Any]:
        """A window for the manifest: bounds, records, event-time range, per-partition offsets."""
        batch = self.read.batch
        window: dict[str, Any] = {"topic": self.read.topic, **bounds, "records": int(mask.sum())}
        window["devices"] = int(pd.unique(batch.device_id[mask]).size)
        times = batch.event_time_ms[mask]
        window["event_time"] = {"first": _iso(int(times.min())), "last": _iso(int(times.max()))} if len(times) else None
        partitions, offsets = self.read.partition[mask], self.read.offset[mask]
        window["offsets"] = {
            str(p): {
                "first": int(offsets[partitions == p].min()),
                "last": int(offsets[partitions == p].max()),
                "records": int((partitions == p).sum()),
            }
            for p in np.unique(partitions).tolist()
        }
        return window


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run did."""

    publication: PublishResult
    windows: TrainingWindows
    metrics: dict[str, Any]
    read_s: float
    fit_s: float
    announced: bool


def read_windows(
    settings: TrainSettings, kafka: KafkaSettings, topic: str, *, on_progress: Callable[[int, int], None] | None = None
) -> TrainingWindows:
    """Read the topic once and mark the training and evaluation rows (see the module docstring).

    Raises:
        ModelError: the training window holds no records.
        KafkaClientError: the topic cannot be read.
    """
    start_ms = _ms(settings.train_start) if settings.train_start else None
    read = read_topic(
        kafka,
        topic,
        start_ms=start_ms,
        idle_timeout_s=settings.read_timeout,
        client_id=settings.client_id,
        on_progress=on_progress,
    )
    batch = read.batch
    if settings.train_records is not None:
        position, _ = device_positions(batch.device_id)
        train = position < settings.train_records
        evaluate = ~train
        bounds: dict[str, Any] = {"mode": "records-per-device", "first_records": settings.train_records}
        eval_bounds: dict[str, Any] = {"mode": "records-per-device", "after_records": settings.train_records}
    else:
        assert settings.train_end is not None  # the settings validator guarantees it
        t = batch.event_time_ms
        train_end = _ms(settings.train_end)
        eval_end = _ms(settings.eval_end) if settings.eval_end else None
        train = (t >= (start_ms if start_ms is not None else np.iinfo(np.int64).min)) & (t < train_end)
        evaluate = (t >= train_end) & (t < eval_end if eval_end is not None else True)
        bounds = {"mode": "event-time", "start": _iso_or_none(start_ms), "end": _iso(train_end)}
        eval_bounds = {"mode": "event-time", "start": _iso(train_end), "end": _iso_or_none(eval_end)}
    if not train.any():
        seen = f"{_iso(int(batch.event_time_ms.min()))} to {_iso(int(batch.event_time_ms.max()))}" if len(batch) else ""
        raise ModelError(
            f"no training records in {topic} for {bounds} ({len(batch)} records read"
            + (f", event times {seen}" if seen else "")
            + "): produce data first or change the window"
        )
    return TrainingWindows(read, train, evaluate, bounds, eval_bounds)


def fit_model(windows: TrainingWindows, settings: TrainSettings) -> AnomalyModel:
    """``AnomalyModel.fit`` on the training rows, with the settings' detector, seed and parameters."""
    train = windows.read.batch.take(windows.train)
    params = {"target_far": settings.target_far, **settings.params}  # a target in --params wins
    return AnomalyModel.fit(
        train, settings.model, settings.per_device, settings.seed, params, settings.jobs or 1, settings.cluster
    )


def score_evaluation(
    model: AnomalyModel, windows: TrainingWindows
) -> tuple[TelemetryBatch, np.ndarray, np.ndarray, np.ndarray]:
    """The evaluation rows, their scores, thresholds and flags (scored after their training rows, for history;
    a reading of a device still warming up is not flagged, as in the scorer)."""
    scored = windows.train | windows.evaluate
    batch = windows.read.batch.take(scored)
    result = model.score(batch, explain="none")
    rows = windows.evaluate[scored]
    return batch.take(rows), result.score[rows], result.threshold[rows], result.flagged[rows]


def train(
    settings: TrainSettings,
    kafka: KafkaSettings,
    topics: TopicSettings,
    store: ModelStore,
    *,
    show_progress: bool | None = None,
) -> TrainOutcome:
    """Read, fit, evaluate, publish and announce (the whole of `anomstream train`).

    Raises:
        ModelError: no training data, or the model cannot be fitted or published.
        KafkaClientError: the topic cannot be read.
    """
    with _progress_display(show_progress) as display:
        started = time.monotonic()
        windows = read_windows(settings, kafka, topics.telemetry_topic, on_progress=display.reading)
        read_s = time.monotonic() - started
        started = time.monotonic()
        with display.step(f"fitting {settings.model} on {int(windows.train.sum()):,} records"):
            model = fit_model(windows, settings)
        fit_s = time.monotonic() - started
        with display.step(f"evaluating on {int(windows.evaluate.sum()):,} records"):
            eval_batch, score, threshold, flagged = score_evaluation(model, windows)
            metrics = evaluation_metrics(eval_batch, score, flagged)
            incidents = incidents_of_flags(eval_batch.device_id, eval_batch.event_time_ms, eval_batch.seq, flagged,
                                           score, threshold, int(settings.incident_quiet * 1000))  # fmt: skip
            metrics["incidents"] = _incident_metrics(eval_batch, incidents)
            metrics["calibration"] = {**model.calibration, "achieved_far": _normal_flag_rate(eval_batch, flagged)}
            incumbent = _incumbent_metrics(store, settings, windows) if metrics.get("f1") is not None else None
        manifest_extra = {
            "source": {"topic": topics.telemetry_topic, "read_ranges": _ranges(windows.read)},
            "training": {"window": windows.describe(windows.train, windows.train_bounds), "fit_s": round(fit_s, 3)},
            "evaluation": {
                "window": windows.describe(windows.evaluate, windows.eval_bounds),
                "metrics": metrics,
                "report": ["report.json", "report.png", "incidents.png"],
            },
            "trainer": {"params": settings.params, "read_s": round(read_s, 3)},
        }
        with display.step(f"publishing {settings.model_name}"):
            publication = store.publish(
                settings.model_name,
                model,
                manifest_extra,
                settings.promote,
                attachments=lambda folder: _write_report(folder, eval_batch, score, threshold, metrics, settings)
                + _write_incidents(folder, eval_batch, incidents, settings),
                probe=windows.read.batch.take(slice(0, PROBE_ROWS)),
                incumbent_metrics=incumbent,
            )
    announced = _announce(kafka, topics.models_topic, publication)
    return TrainOutcome(publication, windows, metrics, read_s, fit_s, announced)


def evaluation_metrics(batch: TelemetryBatch, score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Score distribution and flag rate; with labels also F1, FAR, MAR, precision, recall, ROC-AUC, PR-AUC.

    Without a labelled row there is no ``f1`` key (the promotion gate then has nothing to compare).
    """
    labelled = int((batch.label != NO_LABEL).sum())
    if not labelled:
        return {"labelled_rows": 0, "scores": evaluation.score_distribution(score, flagged)}
    return {"labelled_rows": labelled, **evaluation.evaluate(batch.label, score, flagged)}


def _normal_flag_rate(batch: TelemetryBatch, flagged: np.ndarray) -> float | None:
    """Share of the evaluation window's normal readings flagged (all readings are taken as normal when none
    is labelled): the false-alarm rate achieved, beside the target the threshold was calibrated for."""
    normal = batch.label == 0 if (batch.label != NO_LABEL).any() else np.ones(len(batch), bool)
    return float(flagged[normal].mean()) if normal.any() else None


def _write_report(
    folder: Path,
    batch: TelemetryBatch,
    score: np.ndarray,
    threshold: np.ndarray,
    metrics: dict[str, Any],
    settings: TrainSettings,
) -> list[str]:
    order = np.argsort(batch.event_time_ms, kind="stable")  # the plot's time axis runs forward
    return evaluation.write_report(
        folder,
        event_time_ms=batch.event_time_ms[order],
        scores=score[order],
        threshold=threshold[order],
        flagged=(score > threshold)[order],
        labels=batch.label[order],
        title=f"{settings.model_name}: {settings.model} on the evaluation window",
        extra={"model": settings.model_name, "detector": settings.model, "devices": sorted(set(batch.device_id))},
        metrics=metrics,
    )


def _incident_metrics(batch: TelemetryBatch, incidents: list[dict[str, Any]]) -> dict[str, Any]:
    """Incidents of the evaluation window; with labels, their precision and recall against the faults."""
    spans = [(e["device_id"], e["start_time"], e["end_time"]) for e in incidents]
    if not (batch.label != NO_LABEL).any():
        return {"incidents": len(spans), "closed": sum(e["state"] == "closed" for e in incidents)}
    return incident_quality(batch.device_id, batch.event_time_ms, batch.label, spans)


def _write_incidents(
    folder: Path, batch: TelemetryBatch, incidents: list[dict[str, Any]], settings: TrainSettings
) -> list[str]:
    spans = [(e["device_id"], e["start_time"], e["end_time"]) for e in incidents]
    title = f"{settings.model_name}: incidents on the evaluation window (quiet {settings.incident_quiet:g} s)"
    evaluation.plot_incidents(folder / evaluation.INCIDENTS_PNG, batch.device_id, batch.event_time_ms,
                              batch.label, spans, title)  # fmt: skip
    return [evaluation.INCIDENTS_PNG]


def _incumbent_metrics(store: ModelStore, settings: TrainSettings, windows: TrainingWindows) -> dict[str, Any] | None:
    """The current version's metrics on this run's evaluation window, for the promotion gate (None: unknown)."""
    if settings.promote != "auto" or store.current_version(settings.model_name) is None:
        return None
    try:
        current = store.load(settings.model_name)
        eval_batch, score, _, flagged = score_evaluation(current.model, windows)
        return evaluation_metrics(eval_batch, score, flagged)
    except (AnomstreamError, KeyError, ValueError) as exc:
        logger.warning("cannot score the current %s on this evaluation window (%s)", settings.model_name, exc)
        return None


def _announce(kafka: KafkaSettings, models_topic: str, publication: PublishResult) -> bool:
    try:
        announce(
            kafka,
            models_topic,
            publication.name,
            publication.version,
            publication.manifest,
            current_version=publication.current_version,
        )
    except AnomstreamError as exc:
        logger.error(
            "published %s version %d but could not announce it (%s): scorers see it when they next check the store",
            publication.name,
            publication.version,
            exc,
        )
        return False
    return True


def _ranges(read: TopicRead) -> dict[str, list[int]]:
    return {str(r.partition): [r.start, r.end] for r in read.ranges}


def _ms(moment: datetime) -> int:
    """Epoch milliseconds; a time without a zone is UTC (as SKAB's and the sources' times are read)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else _iso(ms)


class _Display:
    """A rich progress display: a bar while reading, a spinner per later step; silent when not shown."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self._read_task: Any = None

    def reading(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self._read_task is None:
            self._read_task = self.progress.add_task("reading the topic", total=max(total, 1))
        self.progress.update(self._read_task, completed=done, total=max(total, 1))

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        logger.info("%s", description)
        if self.progress is None:
            yield
            return
        task = self.progress.add_task(description, total=None)
        yield
        self.progress.update(task, total=1, completed=1)


@contextmanager
def _progress_display(show: bool | None) -> Iterator[_Display]:
    console = Console(stderr=True)
    if not (console.is_terminal if show is None else show):
        yield _Display(None)
        return
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Display(progress)


__all__ = [
    "DETECTORS",
    "PROMOTE_MODES",
    "TrainOutcome",
    "TrainSettings",
    "TrainingWindows",
    "evaluation_metrics",
    "fit_model",
    "read_windows",
    "score_evaluation",
    "train",
]
