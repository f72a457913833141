"""NAB scoring: the Numenta Anomaly Benchmark's reward for early detections (Lavin & Ahmad 2015; Ahmad et al. 2017).

NAB scores *detections* (rows where a detector raises an alarm) against labelled anomaly *windows*, per file:

- The first ``min(floor(0.15 * rows), 0.15 * 5000)`` rows are a probation period in which a detector learns:
  rows there are never scored, and a window that lies wholly inside it is neither reward nor cost.
- A window is worth ``tpWeight * S(p) / S(-1)`` for its earliest detection, where ``p`` in ``[-1, 0)`` is the
  detection's position in the window (``-1`` at its first row) and ``S(p) = 2 * sigmoid(-5 p) - 1`` is NAB's
  scaled sigmoid, so a detection on a window's first row earns exactly ``tpWeight``; later detections in the
  same window earn nothing more. A window without a detection costs ``-fnWeight``.
- A detection outside every window costs ``fpWeight * S(d)`` (``S(d) < 0``), where ``d`` is its distance after
  the end of the preceding window in units of that window's width minus one row (``S = -1`` for ``d > 3``), and
  ``-fpWeight`` when no window precedes it: false alarms just after an anomaly cost less than remote ones.
- The raw score of a file is the sum of those terms. Over a set of files NAB normalises the summed raw score
  between the "null" detector (never detects: ``-fnWeight`` per scorable window) and a perfect one
  (``tpWeight`` per labelled window): ``100 * (raw - null) / (perfect - null)``.
- Row counts as in NAB's score files: after probation, TP/FN are detected/undetected rows inside windows,
  FP/TN detected/undetected rows outside them; ``total`` is all rows of the file.

NAB's thresholded detections are ``anomaly_score >= threshold`` (its sweeper's rule). This module reproduces
NAB's published per-file scores and counts of its Numenta HTM results exactly (``tests/test_nab.py``). One
deliberate difference: NAB only enters a window when a row's timestamp equals the window's start exactly;
here a window covers the rows whose timestamps lie within its bounds, which is the same on NAB's own data
(every window bound is a row's timestamp) and does not silently drop windows of resampled files.

Source: github.com/numenta/NAB (``nab/sweeper.py``, ``nab/scorer.py``, ``nab/runner.py``), MIT licence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBATION_PERCENT = 0.15  # NAB's probationaryPercent
PROBATION_MAX_ROWS = PROBATION_PERCENT * 5000  # NAB caps probation at 15 % of 5,000 rows = 750
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

Window = tuple[np.datetime64, np.datetime64]


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile's weights."""

    tp_weight: float
    fp_weight: float
    fn_weight: float


# NAB's config/profiles.json (its tnWeight is unused by the scorer).
PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


@dataclass(frozen=True)
class FileScore:
    """NAB's outcome for one file under one profile.

    Attributes:
        raw: the file's NAB score (sum of window rewards, missed-window costs and false-alarm costs).
        tp: detected rows inside windows, after probation.
        tn: undetected rows outside windows, after probation.
        fp: detected rows outside windows, after probation (false alarms).
        fn: undetected rows inside windows, after probation.
        total: all rows of the file (probation included), as in NAB's ``Total_Count``.
        windows: labelled windows of the file (what a perfect detector is credited for).
        scorable_windows: windows with at least one row after probation (what the null detector pays for).
        detected: scorable windows with at least one detection after probation.
        null: raw score of a detector that never detects.
        perfect: raw score credited to a perfect detector (``tpWeight`` per labelled window).
    """

    raw: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int
    windows: int
    scorable_windows: int
    detected: int
    null: float
    perfect: float


def load_windows(labels_path: str | Path) -> dict[str, list[Window]]:
    """NAB's anomaly windows per file, from ``labels/combined_windows.json``.

    Args:
        labels_path: the windows file; keys are ``"<category>/<file>.csv"``, values ``[[start, end], ...]``.

    Returns:
        For each file key, its windows as ``(start, end)`` ``datetime64[ns]`` pairs (ends included).
    """
    raw = json.loads(Path(labels_path).read_text())
    return {key: [_window(pair) for pair in pairs] for key, pairs in raw.items()}


def load_profiles(path: str | Path) -> dict[str, CostMatrix]:
    """NAB's application profiles from ``config/profiles.json``.

    Args:
        path: the profiles file (``{name: {"CostMatrix": {"tpWeight": .., "fpWeight": .., "fnWeight": ..}}}``).

    Returns:
        Each profile's cost matrix by name.
    """
    raw = json.loads(Path(path).read_text())
    return {
        name: CostMatrix(
            tp_weight=float(spec["CostMatrix"]["tpWeight"]),
            fp_weight=float(spec["CostMatrix"]["fpWeight"]),
            fn_weight=float(spec["CostMatrix"]["fnWeight"]),
        )
        for name, spec in raw.items()
    }


def probation_rows(rows: int, percent: float = PROBATION_PERCENT) -> int:
    """NAB's probation period: ``min(floor(percent * rows), percent * 5000)`` leading rows (750 at most)."""
    return int(min(math.floor(percent * rows), percent * 5000))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's ``2 * sigmoid(-5 * position) - 1``, and ``-1`` beyond ``position > 3`` (far from any window)."""
    position = np.asarray(position, dtype=float)
    with np.errstate(over="ignore"):  # exp overflows to inf for remote positions: the value is -1 then
        value = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position > 3.0, -1.0, value)


def detections_at(anomaly_scores: np.ndarray | Sequence[float], threshold: float) -> np.ndarray:
    """Detections of a numeric anomaly score at a threshold: ``score >= threshold``, as NAB's sweeper counts."""
    return np.asarray(anomaly_scores, dtype=float) >= threshold


def score_file(
    timestamps: np.ndarray | Sequence[Any],
    detections: np.ndarray | Sequence[bool],
    windows: Iterable[Window | Sequence[Any]],
    profile: CostMatrix,
    probation_percent: float = PROBATION_PERCENT,
) -> FileScore:
    """NAB's score and row counts of one file's detections.

    Args:
        timestamps: ``(n,)`` row times, ascending (anything ``numpy.datetime64`` accepts).
        detections: ``(n,)`` True where the detector raised an alarm.
        windows: the file's anomaly windows as ``(start, end)`` times, ends included, not overlapping.
        profile: the cost matrix.
        probation_percent: share of leading rows never scored (NAB: 0.15).

    Returns:
        The file's :class:`FileScore`.

    Raises:
        ValueError: lengths differ, timestamps are not ascending, or windows overlap.
    """
    times = np.asarray(timestamps, dtype="datetime64[ns]")
    detected_rows = np.asarray(detections, dtype=bool)
    if times.shape != detected_rows.shape or times.ndim != 1:
        raise ValueError(f"timestamps {times.shape} and detections {detected_rows.shape} must be equal 1-d shapes")
    if len(times) > 1 and (np.diff(times) < np.timedelta64(0, "ns")).any():
        raise ValueError("timestamps must be ascending")
    labelled = [_window(w) for w in windows]
    bounds = _window_rows(times, labelled)
    rows = len(times)
    probation = probation_rows(rows, probation_percent)
    scored = np.arange(rows) >= probation

    # Per-row reward of a detection there, as NAB's sweeper weighs it.
    reward = np.full(rows, -profile.fp_weight)  # outside windows, no window before: S = -1
    window_of = np.full(rows, -1)
    max_tp = float(scaled_sigmoid(-1.0))
    previous_end, previous_width = -1, 0
    for number, (first, last) in enumerate(bounds):
        width = last - first + 1
        if previous_end >= 0:
            _set_false_alarm_costs(reward, previous_end, previous_width, first, profile)
        inside = np.arange(first, last + 1)
        window_of[inside] = number
        reward[inside] = scaled_sigmoid(-(last - inside + 1) / width) * profile.tp_weight / max_tp
        previous_end, previous_width = last, width
    if previous_end >= 0:
        _set_false_alarm_costs(reward, previous_end, previous_width, rows, profile)

    in_window = window_of >= 0
    hits = detected_rows & scored
    false_alarms = hits & ~in_window
    raw = float(reward[false_alarms].sum())
    scorable = detected = 0
    for number, (_, last) in enumerate(bounds):
        if last < probation:
            continue  # wholly inside probation: NAB neither rewards nor charges it
        scorable += 1
        window_hits = np.flatnonzero(hits & (window_of == number))
        if len(window_hits):
            detected += 1
            # The earliest detection has the highest reward; NAB keeps the maximum of -fnWeight and rewards.
            raw += max(-profile.fn_weight, float(reward[window_hits].max()))
        else:
            raw -= profile.fn_weight
    return FileScore(
        raw=raw,
        tp=int((hits & in_window).sum()),
        tn=int((scored & ~detected_rows & ~in_window).sum()),
        fp=int(false_alarms.sum()),
        fn=int((scored & ~detected_rows & in_window).sum()),
        total=rows,
        windows=len(labelled),
        scorable_windows=scorable,
        detected=detected,
        null=-profile.fn_weight * scorable,
        perfect=profile.tp_weight * len(labelled),
    )


def normalised_score(file_scores: Iterable[FileScore]) -> float:
    """NAB's normalised score over files: ``100 * (raw - null) / (perfect - null)``, each summed over files.

    Args:
        file_scores: the files' scores under one profile.

    Returns:
        100 for a perfect detector, 0 for one that never detects (negative when false alarms outweigh hits).

    Raises:
        ValueError: no file has a window (the score is undefined).
    """
    scores = list(file_scores)
    raw = sum(s.raw for s in scores)
    null = sum(s.null for s in scores)
    perfect = sum(s.perfect for s in scores)
    if perfect == null:
        raise ValueError("no labelled window in these files: the NAB score is undefined")
    return 100.0 * (raw - null) / (perfect - null)


def score_files(
    files: Mapping[str, tuple[np.ndarray, np.ndarray]],
    windows: Mapping[str, Sequence[Window]],
    profiles: Mapping[str, CostMatrix] | None = None,
) -> dict[str, dict[str, FileScore]]:
    """Score several files under several profiles.

    Args:
        files: per file key, ``(timestamps, detections)``.
        windows: per file key, its windows (every key of ``files`` must be listed).
        profiles: cost matrices by name (default: NAB's three).

    Returns:
        Per profile name, per file key, the :class:`FileScore`.

    Raises:
        KeyError: a file has no entry in ``windows``.
    """
    profiles = PROFILES if profiles is None else profiles
    return {
        name: {key: score_file(times, hits, windows[key], profile) for key, (times, hits) in files.items()}
        for name, profile in profiles.items()
    }


def _window(pair: Sequence[Any]) -> Window:
    start, end = (np.datetime64(str(bound).replace(" ", "T"), "ns") for bound in pair)
    return start, end


def _window_rows(times: np.ndarray, windows: Iterable[Window | Sequence[Any]]) -> list[tuple[int, int]]:
    """First and last row index of each window that holds rows, in time order."""
    bounds: list[tuple[int, int]] = []
    for start, end in sorted(_window(w) for w in windows):
        first = int(np.searchsorted(times, start, side="left"))
        last = int(np.searchsorted(times, end, side="right")) - 1
        if first > last:
            continue  # no row falls inside: nothing to detect
        if bounds and first <= bounds[-1][1]:
            raise ValueError(f"anomaly window starting {start} overlaps the previous one")
        bounds.append((first, last))
    return bounds


def _set_false_alarm_costs(
    reward: np.ndarray, previous_end: int, previous_width: int, stop: int, profile: CostMatrix
) -> None:
    """Costs of detections after a window, up to row ``stop``: NAB's scaled sigmoid of the relative distance."""
    after = np.arange(previous_end + 1, stop)
    # NAB divides by width - 1; a one-row window leaves no scale, so every later alarm counts as remote.
    distance = (after - previous_end) / float(previous_width - 1) if previous_width > 1 else np.full(len(after), np.inf)
    reward[after] = scaled_sigmoid(distance) * profile.fp_weight
