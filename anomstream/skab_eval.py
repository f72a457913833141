"""The SKAB evaluation protocol (Skoltech Anomaly Benchmark, Katser & Kozitsin 2020).

For every ``*.csv`` under a folder (recursively, in natural order) that has an ``anomaly`` column: the
file's first ``train_rows`` readings (400, an anomaly-free period in SKAB) train a model through
``AnomalyModel.fit`` with the detector's default configuration and seed (exactly what ``anomstream train
--model NAME --per-device --train-records 400`` fits per device, so streaming flags equal these); the model
scores the whole file, so the causal features of the first test readings see the training readings before
them, as a streaming scorer's history would; metrics count the remaining (test) readings only and are
summed over files, as SKAB's ``core/metrics.py`` does.

Files without labels (``anomaly-free/anomaly-free.csv``) are skipped.

Figures with the default configurations: ``python bench/quality.py`` (and the README). What carries them
(``anomstream.model.DEFAULT_CONFIGS``): trailing 10-reading means and spreads instead of single readings;
the thermal channels, which drift far beyond the 400-reading training period, monitored through their
recent change, the other channels against the median of their last 1,000 readings; a 20-reading alarm hold,
since the flow responds tens of readings after a labelled valve event starts; thresholds for the default
false-alarm rate from out-of-fold scores of the training readings. Most of the missed readings are those
response delays and two files (valve1/0, valve1/2) whose anomaly barely shows in any sensor. Isolation
Forest stays weak: its bounded score saturates, so the extrapolated tail of its held-back scores lies near
the score's ceiling.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomstream.errors import SourceError
from anomstream.evaluation import Confusion, ranking_metrics, score_distribution, write_report
from anomstream.model import AnomalyModel
from anomstream.sources import csv_files, read_skab_file
from anomstream.telemetry import NO_LABEL

logger = logging.getLogger(__name__)

TRAIN_ROWS = 400  # SKAB's protocol: each file starts with an anomaly-free period of this many readings


@dataclass
class FileResult:
    """One file's outcome on its test readings."""

    path: Path
    device_id: str
    confusion: Confusion
    event_time_ms: np.ndarray = field(repr=False)
    score: np.ndarray = field(repr=False)
    threshold: np.ndarray = field(repr=False)
    flagged: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)


@dataclass
class SkabResult:
    """Outcome of a whole SKAB run: per-file results and their sum."""

    detector: str
    seed: int
    files: list[FileResult]
    skipped: list[Path]
    seconds: float

    @property
    def total(self) -> Confusion:
        """Confusion counts summed over files."""
        total = Confusion()
        for result in self.files:
            total = total + result.confusion
        return total

    def to_dict(self) -> dict[str, Any]:
        """Summary, JSON-ready: SKAB's metrics, ranking metrics over score/threshold, per-file counts."""
        labels = np.concatenate([r.label for r in self.files]) if self.files else np.zeros(0)
        # Scores of different files live on different scales; score / threshold makes them comparable.
        relative = np.concatenate([r.score / r.threshold for r in self.files]) if self.files else np.zeros(0)
        flagged = np.concatenate([r.flagged for r in self.files]) if self.files else np.zeros(0, bool)
        return {
            "detector": self.detector,
            "seed": self.seed,
            **self.total.to_dict(),
            **ranking_metrics(labels, relative),
            "relative_scores": score_distribution(relative, flagged),
            "files": len(self.files),
            "skipped": [str(p) for p in self.skipped],
            "seconds": round(self.seconds, 3),
            "per_file": [
                {"file": str(r.path), "device_id": r.device_id, **r.confusion.to_dict()} for r in self.files
            ],
        }


def evaluate_file(
    path: Path,
    detector: str,
    seed: int = 0,
    train_rows: int = TRAIN_ROWS,
    params: dict[str, Any] | None = None,
) -> FileResult | None:
    """Train on a file's first ``train_rows`` readings, score them all, count the rest; None if unlabelled."""
    batch = read_skab_file(path)
    if (batch.label == NO_LABEL).all():
        logger.info("skipping %s: no anomaly labels", path)
        return None
    if len(batch) <= train_rows:
        raise SourceError(f"{path} has {len(batch)} readings, not more than {train_rows} to train on")
    training = batch.take(slice(0, train_rows))
    model = AnomalyModel.fit(training, detector, per_device=True, seed=seed, params=params)
    result = model.score(batch, explain="none")
    test = slice(train_rows, None)
    return FileResult(
        path=Path(path),
        device_id=str(batch.device_id[0]),
        confusion=Confusion.of(batch.label[test], result.flagged[test]),
        event_time_ms=batch.event_time_ms[test],
        score=result.score[test],
        threshold=result.threshold[test],
        flagged=result.flagged[test],
        label=batch.label[test],
    )


def evaluate_skab(
    data_dir: str | Path,
    detector: str,
    seed: int = 0,
    train_rows: int = TRAIN_ROWS,
    params: dict[str, Any] | None = None,
    report_dir: str | Path | None = None,
) -> SkabResult:
    """Run the SKAB protocol over every labelled CSV file under ``data_dir``.

    Args:
        data_dir: a SKAB ``data`` folder (or any folder or single file in SKAB format).
        detector: ``iforest``, ``pca``, ``dense-ae`` or ``conv-ae``.
        seed: model seed (the default 0 is what ``anomstream train`` uses).
        train_rows: leading readings per file used for training.
        params: overrides of the detector's default configuration (for experiments only: the benchmark
            figures use the defaults).
        report_dir: when given, ``report.json`` and ``report.png`` (all test readings in file order) go here.

    Raises:
        SourceError: no labelled file under ``data_dir``, or a file cannot be read.
    """
    started = time.perf_counter()
    files: list[FileResult] = []
    skipped: list[Path] = []
    for path in csv_files(str(data_dir)):
        result = evaluate_file(path, detector, seed=seed, train_rows=train_rows, params=params)
        if result is None:
            skipped.append(path)
        else:
            files.append(result)
            logger.debug("%s: %s", path, result.confusion)
    if not files:
        raise SourceError(f"no labelled SKAB file under {data_dir}: give the folder holding valve1/, valve2/")
    outcome = SkabResult(detector, seed, files, skipped, time.perf_counter() - started)
    if report_dir is not None:
        _write(outcome, Path(report_dir))
    return outcome


def _write(outcome: SkabResult, directory: Path) -> None:
    """The report over all files, relative scores (score / threshold) so that one threshold line is 1."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in outcome.files])

    relative = joined("score") / joined("threshold")
    write_report(
        directory,
        event_time_ms=None,  # files cover different days: plot them one after another by reading
        scores=relative,
        threshold=np.ones_like(relative),
        flagged=joined("flagged"),
        labels=joined("label"),
        title=f"SKAB, {outcome.detector}: score / threshold, test readings of {len(outcome.files)} files",
        metrics=outcome.to_dict(),
    )
