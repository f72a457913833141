"""Evaluation of flags and scores against labels: point-wise metrics, a JSON report and a plot.

The point-wise metrics are those of SKAB's ``core/metrics.py`` (binary mode), so figures compare with its
leaderboard: counts of true/false positives and negatives over labelled readings, and

- ``F1 = TP / (TP + (FP + FN) / 2)``,
- ``FAR = 100 * FP / (FP + TN)`` (false alarm rate, %), ``MAR = 100 * FN / (FN + TP)`` (missed alarm rate, %).

Counts add up over files (SKAB sums them before computing the ratios). Threshold-free ranking metrics
(ROC-AUC, PR-AUC) come from ``sklearn.metrics``. Readings labelled ``NO_LABEL`` are left out everywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from anomstream.jsonable import json_default
from anomstream.telemetry import NO_LABEL

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
INCIDENTS_PNG = "incidents.png"
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class Confusion:
    """Point-wise confusion counts; ``+`` adds counts (e.g. over files)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, labels: np.ndarray, flagged: np.ndarray) -> Confusion:
        """Counts over the labelled rows (``labels`` 1 anomalous, 0 normal, ``NO_LABEL`` ignored)."""
        labels, flagged = np.asarray(labels), np.asarray(flagged, dtype=bool)
        if labels.shape != flagged.shape:
            raise ValueError(f"labels {labels.shape} and flags {flagged.shape} differ in shape")
        known = labels != NO_LABEL
        anomalous, flagged = labels[known] == 1, flagged[known]
        return cls(
            tp=int((anomalous & flagged).sum()),
            fp=int((~anomalous & flagged).sum()),
            fn=int((anomalous & ~flagged).sum()),
            tn=int((~anomalous & ~flagged).sum()),
        )

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def f1(self) -> float:
        """``TP / (TP + (FP + FN) / 2)``; 0 when there is nothing to find and nothing flagged."""
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        """False alarm rate in percent, ``100 FP / (FP + TN)``."""
        return 100.0 * _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed alarm rate in percent, ``100 FN / (FN + TP)``."""
        return 100.0 * _ratio(self.fn, self.fn + self.tp)

    @property
    def precision(self) -> float:
        """``TP / (TP + FP)``."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """``TP / (TP + FN)``."""
        return _ratio(self.tp, self.tp + self.fn)

    def to_dict(self) -> dict[str, float | int]:
        """Counts and ratios, JSON-ready."""
        return {
            "f1": self.f1,
            "far": self.far,
            "mar": self.mar,
            "precision": self.precision,
            "recall": self.recall,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC (average precision) of scores over labelled rows; None without both classes."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    known = (labels != NO_LABEL) & np.isfinite(scores)
    anomalous = labels[known] == 1
    if anomalous.all() or not anomalous.any():
        return {"roc_auc": None, "pr_auc": None}
    return {
        "roc_auc": float(roc_auc_score(anomalous, scores[known])),
        "pr_auc": float(average_precision_score(anomalous, scores[known])),
    }


def score_distribution(scores: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Quantiles and mean of the scores, and the fraction of rows flagged."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    quantiles = np.quantile(finite, QUANTILES) if len(finite) else np.full(len(QUANTILES), np.nan)
    named = zip(QUANTILES, quantiles, strict=True)
    return {
        "quantiles": {f"q{round(q * 100):02d}": _json_float(v) for q, v in named},
        "mean": _json_float(finite.mean()) if len(finite) else None,
        "rows": int(len(scores)),
        "flag_rate": float(np.mean(flagged)) if len(flagged) else 0.0,
    }


def evaluate(labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Point-wise metrics, ranking metrics and the score distribution, as one JSON-ready dict."""
    return {
        **Confusion.of(labels, flagged).to_dict(),
        **ranking_metrics(labels, scores),
        "scores": score_distribution(scores, flagged),
    }


def plot_report(
    path: str | Path,
    event_time_ms: np.ndarray | None,
    scores: np.ndarray,
    threshold: np.ndarray,
    labels: np.ndarray,
    flagged: np.ndarray,
    title: str = "",
) -> None:
    """A PNG of scores and threshold over event time (or reading index when ``event_time_ms`` is None),
    labelled anomalies shaded, flags marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and safe in worker threads
    import matplotlib.pyplot as plt

    if event_time_ms is None:
        times, x_label = np.arange(len(scores)), "reading"
    else:
        times, x_label = np.asarray(event_time_ms).astype("datetime64[ms]"), "event time (UTC)"
    fig, ax = plt.subplots(figsize=(12, 4))
    try:
        anomalous = np.asarray(labels) == 1
        if anomalous.any():
            ax.fill_between(
                times,
                0,
                1,
                where=anomalous,
                transform=ax.get_xaxis_transform(),
                color="tab:red",
                alpha=0.15,
                step="mid",
                label="labelled anomaly",
            )
        ax.plot(times, scores, lw=0.8, color="tab:blue", label="score")
        ax.plot(times, threshold, lw=1.0, color="tab:orange", ls="--", label="threshold")
        marked = np.asarray(flagged, dtype=bool)
        ax.scatter(times[marked], np.asarray(scores)[marked], s=4, color="tab:red", label="flagged", zorder=3)
        finite = np.asarray(scores)[np.isfinite(scores)]
        if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 1e3:
            ax.set_yscale("log")  # scores spanning decades (T², reconstruction errors) read better in log
        ax.set_xlabel(x_label)
        ax.set_ylabel("anomaly score")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plot_incidents(
    path: str | Path,
    device_id: np.ndarray,
    event_time_ms: np.ndarray,
    labels: np.ndarray,
    incidents: list[tuple[str, int, int]],
    title: str = "",
) -> None:
    """A PNG timeline: one row per device, labelled anomalies shaded red, incidents (``(device, start_ms,
    end_ms)``) as blue bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def day(ms: float) -> float:
        return float(mdates.date2num(np.datetime64(int(ms), "ms")))

    devices = sorted({str(d) for d in device_id})
    row = {d: i for i, d in enumerate(devices)}
    fig, ax = plt.subplots(figsize=(12, max(2.0, 0.35 * len(devices) + 1.2)))
    try:
        times, anomalous, ids = np.asarray(event_time_ms), np.asarray(labels) == 1, np.asarray(device_id)
        for device in devices:
            mine = ids == device
            t, a = times[mine], anomalous[mine]
            starts = np.flatnonzero(a & ~np.r_[False, a[:-1]])
            ends = np.flatnonzero(a & ~np.r_[a[1:], False])
            spans = [(day(t[s]), max(t[e] - t[s], 1000) / 86_400_000) for s, e in zip(starts, ends, strict=True)]
            ax.broken_barh(spans, (row[device] - 0.4, 0.8), color="tab:red", alpha=0.25)
        for device, start, end in incidents:
            if device in row:
                width = max(end - start, 1000) / 86_400_000
                ax.broken_barh([(day(start), width)], (row[device] - 0.25, 0.5), color="tab:blue")
        ax.xaxis_date()
        ax.set_yticks(range(len(devices)), devices, fontsize=7)
        ax.set_xlabel("event time (UTC); red: labelled anomaly, blue: incident")
        ax.set_title(title)
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_report(
    directory: str | Path,
    *,
    event_time_ms: np.ndarray | None,
    scores: np.ndarray,
    threshold: np.ndarray,
    flagged: np.ndarray,
    labels: np.ndarray,
    title: str = "",
    extra: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> list[str]:
    """Write ``report.json`` (metrics, plus ``extra``) and ``report.png`` into ``directory``.

    Args:
        directory: created if missing.
        event_time_ms, scores, threshold, flagged, labels: one entry per evaluated reading (event time may
            be None: the plot then runs over the reading index).
        title: plot title.
        extra: more JSON-ready fields for the report (model name, data set, ...).
        metrics: the metrics to write, when the caller computed them differently (e.g. summed over files);
            by default ``evaluate(labels, scores, flagged)``.

    Returns:
        The file names written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    report = {**(metrics if metrics is not None else evaluate(labels, scores, flagged)), **(extra or {})}
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, default=json_default))
    plot_report(directory / REPORT_PNG, event_time_ms, scores, threshold, labels, flagged, title)
    logger.info("wrote %s and %s in %s", REPORT_JSON, REPORT_PNG, directory)
    return [REPORT_JSON, REPORT_PNG]


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
