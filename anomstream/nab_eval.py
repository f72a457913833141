"""The NAB evaluation protocol (Numenta Anomaly Benchmark: Lavin & Ahmad 2015; Ahmad et al. 2017).

For every NAB ``timestamp,value`` CSV under a folder (a category folder such as ``data/realAWSCloudwatch``
or NAB's ``data`` folder of categories; recursively, in natural order) that NAB's
``<root>/labels/combined_windows.json`` lists (``root`` holds ``data/``):

1. NAB's probation period, ``min(floor(0.15 * rows), 750)`` leading rows, trains a model through
   ``AnomalyModel.fit`` with the detector's default configuration and seed — what ``anomstream train
   --model NAME --per-device`` fits on those rows — since NAB lets detectors learn there and never scores it.
2. The model scores the whole file (the features of the first scored rows see the rows before them, as a
   streaming scorer's history would).
3. A detection is a row where an alarm *starts* (flagged, and the row before not flagged; a flagged first row
   counts): NAB rewards a window's earliest detection and charges each further alarm, so an alarm that stays
   raised for many rows is one detection, as an operator would be paged once.
4. :mod:`anomstream.nab` scores the detections with NAB's three profiles, and normalises the summed raw
   scores between the null detector and a perfect one (100 perfect, 0 never detects).

Unlike NAB's own runner there is no threshold sweep over the corpus (NAB picks each detector's best
threshold on the very files it scores): anomstream's thresholds are calibrated on the probation rows only,
so these figures are what a deployment would see. With ``results_dir`` the detections are written in NAB's
results layout (``<OUT>/<category>/<file>.csv``, ``timestamp,value,anomaly_score`` with 1 at alarm starts),
which NAB's scorer reads at any threshold in ``(0, 1]``.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomstream.errors import ModelError, SourceError
from anomstream.model import AnomalyModel
from anomstream.nab import PROFILE_NAMES, PROFILES, FileScore, Window, load_windows, normalised_score, score_file
from anomstream.nab import probation_rows as nab_probation_rows
from anomstream.sources import csv_files, read_nab_file

logger = logging.getLogger(__name__)

LABELS_FILE = Path("labels") / "combined_windows.json"


@dataclass
class NabFileResult:
    """One file's detections and their NAB scores.

    Attributes:
        path: the data file.
        key: NAB's name of the file, ``"<category>/<file>.csv"``.
        probation: leading rows used for training and left unscored.
        scores: the file's :class:`~anomstream.nab.FileScore` per profile name.
        event_time_ms: ``(n,)`` row times.
        value: ``(n,)`` the file's values.
        detections: ``(n,)`` True where an alarm starts.
    """

    path: Path
    key: str
    probation: int
    scores: dict[str, FileScore]
    event_time_ms: np.ndarray = field(repr=False)
    value: np.ndarray = field(repr=False)
    detections: np.ndarray = field(repr=False)


@dataclass
class NabResult:
    """Outcome of a NAB run: per-file results, normalised scores over all of them."""

    detector: str
    seed: int
    files: list[NabFileResult]
    skipped: list[Path]
    seconds: float

    def normalised(self, profile: str) -> float:
        """NAB's normalised score of all files under one profile (100 perfect, 0 the null detector)."""
        return normalised_score(r.scores[profile] for r in self.files)

    def to_dict(self) -> dict[str, Any]:
        """Summary, JSON-ready: the three normalised scores, window and false-alarm counts, per-file figures."""
        standard = [r.scores["standard"] for r in self.files]
        return {
            **{name: round(self.normalised(name), 6) for name in PROFILE_NAMES},
            "windows": sum(s.windows for s in standard),
            "detected": sum(s.detected for s in standard),
            "fp": sum(s.fp for s in standard),
            "files": len(self.files),
            "skipped": [str(p) for p in self.skipped],
            "detector": self.detector,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "per_file": [
                {
                    "file": r.key,
                    "raw_standard": round(r.scores["standard"].raw, 6),
                    "detected": r.scores["standard"].detected,
                    "windows": r.scores["standard"].windows,
                    "fp": r.scores["standard"].fp,
                }
                for r in self.files
            ],
        }


def alarm_starts(flagged: np.ndarray) -> np.ndarray:
    """Rows where an alarm starts: flagged while the row before is not (a flagged first row is a start)."""
    flagged = np.asarray(flagged, dtype=bool)
    before = np.concatenate([[False], flagged[:-1]])
    return flagged & ~before


def find_labels(path: str | Path) -> tuple[Path, str] | None:
    """NAB's windows file for a data file and the file's key in it, or None outside a NAB tree.

    The windows file is ``<root>/labels/combined_windows.json`` of the nearest ``root`` above the file that
    has one, and the key is the file's path relative to ``<root>/data`` (``"<category>/<file>.csv"``).
    """
    resolved = Path(path).resolve()
    for root in resolved.parents:
        labels = root / LABELS_FILE
        if labels.is_file():
            try:
                return labels, resolved.relative_to(root / "data").as_posix()
            except ValueError:
                return None
    return None


def evaluate_file(
    path: str | Path,
    detector: str,
    windows: list[Window],
    key: str,
    seed: int = 0,
    params: dict[str, Any] | None = None,
) -> NabFileResult:
    """Train on a NAB file's probation rows, score all its rows, score the alarm starts with NAB's profiles.

    Args:
        path: the data file.
        detector: ``iforest``, ``pca``, ``dense-ae`` or ``conv-ae``.
        windows: the file's anomaly windows.
        key: NAB's name of the file (``"<category>/<file>.csv"``).
        seed: model seed.
        params: overrides of the detector's default configuration (experiments only).

    Raises:
        ModelError: no model can be fitted on the file's probation rows (the message names the file).
    """
    path = Path(path)
    batch = read_nab_file(path)
    probation = nab_probation_rows(len(batch))
    try:
        model = AnomalyModel.fit(batch.take(slice(0, probation)), detector, per_device=True, seed=seed, params=params)
    except ModelError as error:
        raise ModelError(f"{path}: cannot fit {detector} on its {probation} probation rows: {error}") from error
    flagged = model.score(batch, explain="none").flagged
    detections = alarm_starts(flagged)
    times = batch.event_time_ms.astype("datetime64[ms]")
    scores = {name: score_file(times, detections, windows, profile) for name, profile in PROFILES.items()}
    return NabFileResult(
        path=path,
        key=key,
        probation=probation,
        scores=scores,
        event_time_ms=batch.event_time_ms,
        value=batch.values[:, 0],
        detections=detections,
    )


def evaluate_nab(
    data_dir: str | Path,
    detector: str,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    results_dir: str | Path | None = None,
) -> NabResult:
    """Run the NAB protocol over every labelled NAB CSV file under ``data_dir``.

    Args:
        data_dir: NAB's ``data`` folder, one of its category folders, or a single NAB file; the windows come
            from ``<root>/labels/combined_windows.json`` above it.
        detector: ``iforest``, ``pca``, ``dense-ae`` or ``conv-ae``.
        seed: model seed (the default 0 is what ``anomstream train`` uses).
        params: overrides of the detector's default configuration (experiments only).
        results_dir: when given, detections go here in NAB's results layout (``<category>/<file>.csv``).

    Raises:
        SourceError: no labelled NAB file under ``data_dir``, or a file cannot be read.
        ModelError: a model cannot be fitted on a file.
    """
    started = time.perf_counter()
    files: list[NabFileResult] = []
    skipped: list[Path] = []
    windows_by_labels: dict[Path, dict[str, list[Window]]] = {}
    for path in csv_files(str(data_dir)):
        found = find_labels(path)
        if found is None:
            logger.info("skipping %s: no labels/combined_windows.json above it", path)
            skipped.append(path)
            continue
        labels, key = found
        if labels not in windows_by_labels:
            windows_by_labels[labels] = load_windows(labels)
        if key not in windows_by_labels[labels]:
            logger.info("skipping %s: %s does not list %s", path, labels, key)
            skipped.append(path)
            continue
        result = evaluate_file(path, detector, windows_by_labels[labels][key], key, seed=seed, params=params)
        files.append(result)
        logger.debug("%s: %s", key, result.scores["standard"])
    if not files:
        raise SourceError(
            f"no labelled NAB file under {data_dir}: give NAB's data folder (beside labels/) or a category in it"
        )
    outcome = NabResult(detector, seed, files, skipped, time.perf_counter() - started)
    if results_dir is not None:
        write_results(outcome, Path(results_dir))
    return outcome


def write_results(outcome: NabResult, directory: Path) -> list[Path]:
    """Write each file's detections as ``<directory>/<category>/<file>.csv`` (NAB's results columns).

    Returns:
        The files written, in file order.
    """
    written = []
    for result in outcome.files:
        target = directory / result.key
        target.parent.mkdir(parents=True, exist_ok=True)
        # NAB's data files write times as "YYYY-MM-DD HH:MM:SS"; readers of NAB results expect the same.
        stamps = np.datetime_as_string(result.event_time_ms.astype("datetime64[ms]"), unit="s")
        with target.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["timestamp", "value", "anomaly_score"])
            for stamp, value, detected in zip(stamps, result.value, result.detections, strict=True):
                writer.writerow([str(stamp).replace("T", " "), repr(float(value)), int(detected)])
        written.append(target)
    return written
