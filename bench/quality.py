"""Alarm quality of every detector's default configuration, on every labelled data set, side by side.

One configuration per detector (``anomstream.model.DEFAULT_CONFIGS``), the same for every data set:

- **SKAB** (valve1 + valve2): SKAB's protocol (``anomstream eval skab``): F1, FAR %, MAR %.
- **NAB** (realAWSCloudwatch + artificialWithAnomaly): NAB's protocol (``anomstream eval nab``): the standard,
  reward_low_FP_rate and reward_low_FN_rate scores (Numenta HTM 72.9 standard on these two categories).
- **Synthetic fleet**: the ``docker compose`` default (20 devices, 60,000 readings, seed 7, 1 % anomalous),
  trained per device on each device's first 1,000 readings as the compose trainer does, scored on the rest:
  alarm precision and recall (:mod:`anomstream.alarms`) and the point-wise FAR.
- **Target vs achieved false-alarm rate** on normal data no detector was tuned on: SKAB's anomaly-free run
  (9,405 readings of normal operation), cut into segments of 1,400 readings every 1,000; each trains on its
  first 400 readings (SKAB's protocol) and the flag rate of the other 1,000 is the achieved rate.

Usage: ``python bench/quality.py [--detectors pca iforest ...] [--skab DIR] [--nab DIR]``. Prints a table,
then one JSON object on the last line: ``{"target_far": ..., "<detector>": {"skab": {...}, "nab": {...},
"fleet": {...}, "anomaly_free_far": ...}}``. The autoencoders train on the CPU here (minutes each).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from anomstream.alarms import alarm_quality
from anomstream.detectors import DETECTOR_NAMES
from anomstream.evaluation import Confusion
from anomstream.features import device_positions
from anomstream.model import DEFAULT_TARGET_FAR, AnomalyModel
from anomstream.nab_eval import evaluate_nab
from anomstream.skab_eval import evaluate_skab
from anomstream.sources import read_skab_file
from anomstream.synthetic import FleetSpec, generate_fleet

FLEET = FleetSpec(devices=20, records=60_000, seed=7, anomaly_rate=0.01)  # docker-compose.yml's producer
FLEET_TRAIN = 1_000  # docker-compose.yml's trainer: each device's first 1,000 readings
SEGMENT, SEGMENT_STEP, SEGMENT_TRAIN = 1_400, 1_000, 400


def skab(detector: str, data: str) -> dict[str, Any]:
    summary = evaluate_skab(data, detector).to_dict()
    return {k: summary[k] for k in ("f1", "far", "mar", "tp", "fp", "fn", "tn")}


def nab(detector: str, data: str) -> dict[str, Any]:
    summary = evaluate_nab(data, detector).to_dict()
    keys = ("standard", "reward_low_FP_rate", "reward_low_FN_rate", "windows", "detected", "fp")
    return {k: summary[k] for k in keys}


def fleet(detector: str) -> dict[str, Any]:
    batch = generate_fleet(FLEET)
    position, _ = device_positions(batch.device_id)
    model = AnomalyModel.fit(batch.take(position < FLEET_TRAIN), detector, per_device=True)
    flagged = model.score(batch, explain="none").flagged
    test = position >= FLEET_TRAIN
    quality = alarm_quality(batch.device_id[test], batch.label[test], flagged[test])
    confusion = Confusion.of(batch.label[test], flagged[test])
    return {**quality, "f1": confusion.f1, "far": confusion.far}


def anomaly_free_far(detector: str, data: str) -> float:
    batch = read_skab_file(f"{data}/anomaly-free/anomaly-free.csv")
    flagged, normal = 0, 0
    for start in range(0, len(batch) - SEGMENT + 1, SEGMENT_STEP):
        segment = batch.take(slice(start, start + SEGMENT))
        model = AnomalyModel.fit(segment.take(slice(0, SEGMENT_TRAIN)), detector, per_device=True)
        flags = model.score(segment, explain="none").flagged[SEGMENT_TRAIN:]
        flagged, normal = flagged + int(flags.sum()), normal + len(flags)
    return flagged / normal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTOR_NAMES), choices=DETECTOR_NAMES)
    parser.add_argument("--skab", default="../shared/data/skab/data")
    parser.add_argument("--nab", default="../shared/data/nab/data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(stderr=True)
    figures: dict[str, Any] = {"target_far": DEFAULT_TARGET_FAR}
    for detector in args.detectors:
        started = time.perf_counter()
        with console.status(f"{detector}..."):
            figures[detector] = {
                "skab": skab(detector, args.skab),
                "nab": nab(detector, args.nab),
                "fleet": fleet(detector),
                "anomaly_free_far": anomaly_free_far(detector, args.skab),
                "seconds": round(time.perf_counter() - started, 1),
            }
        console.print(f"{detector} done in {figures[detector]['seconds']} s")
    table = Table(title=f"Alarm quality, default configurations (target false-alarm rate {DEFAULT_TARGET_FAR:.2%})")
    columns = ["detector", "SKAB F1", "FAR %", "MAR %", "NAB std", "low FP", "low FN", "fleet alarm P", "R",
               "fleet FAR %", "anomaly-free FAR %"]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "detector" else "right")
    for detector in args.detectors:
        f = figures[detector]
        s, n, q = f["skab"], f["nab"], f["fleet"]
        table.add_row(
            detector, f"{s['f1']:.3f}", f"{s['far']:.2f}", f"{s['mar']:.2f}", f"{n['standard']:.1f}",
            f"{n['reward_low_FP_rate']:.1f}", f"{n['reward_low_FN_rate']:.1f}", f"{q['alarm_precision']:.2f}",
            f"{q['alarm_recall']:.2f}", f"{q['far']:.2f}", f"{100 * f['anomaly_free_far']:.2f}",
        )  # fmt: skip
    Console().print(table)
    print(json.dumps(figures, default=lambda v: float(v) if isinstance(v, np.floating) else int(v)))


if __name__ == "__main__":
    main()
