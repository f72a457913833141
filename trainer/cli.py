"""`anomstream train`: fit a model on a window of the telemetry topic, evaluate it on a later one, publish it.

Every flag defaults from an environment variable (shown in ``--help``). Exit status: 0 when the model was
published (made current or, refused by the promotion gate, stored only; the summary says which), 1 when
it could not be read, fitted or published, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from anomstream.cli import add_command
from anomstream.config import (
    KafkaSettings,
    ModelStoreSettings,
    TopicSettings,
    parse_settings,
)
from anomstream.model_store import ModelStore
from anomstream.trainer import TrainOutcome, TrainSettings, train

log = logging.getLogger(__name__)

EPILOG = """examples:
  anomstream train --model iforest --per-device --train-records 400 --name valves
  anomstream train --model pca --train-start 2020-03-09T10:00 --train-end 2020-03-09T11:00 --eval-end 2020-03-09T12:00
  anomstream train --model conv-ae --train-records 5000 --promote never --params '{"max_epochs": 20}'
"""


def add_parser(subparsers: Any) -> None:
    """Register ``train``."""
    settings = ((TrainSettings, "training"), TopicSettings, ModelStoreSettings, KafkaSettings)
    add_command(subparsers, "train", __doc__, EPILOG, settings, run)


def run(args: argparse.Namespace) -> int:
    """Train with the parsed flags; returns the exit status."""
    settings, kafka, topics, store_settings = parse_settings(
        args, "train", TrainSettings, KafkaSettings, TopicSettings, ModelStoreSettings
    )
    outcome = train(settings, kafka, topics, ModelStore(store_settings.model_dir, store_settings.store_key()))
    print(summary(outcome), flush=True)
    return 0


def summary(outcome: TrainOutcome) -> str:
    """A few lines for people: what was read, fitted, measured and published."""
    publication, windows = outcome.publication, outcome.windows
    metrics = outcome.metrics
    figures = f"flag rate {metrics['scores']['flag_rate']:.2%}"
    if metrics.get("f1") is not None:
        figures += f", F1 {metrics['f1']:.3f}, FAR {metrics['far']:.2f} %, MAR {metrics['mar']:.2f} %"
    calibration = metrics.get("calibration", {})
    if calibration.get("achieved_far") is not None:
        figures += (
            f"; false alarms on normal readings {calibration['achieved_far']:.2%}"
            f" (target {calibration['target_far']:.2%})"
        )
    on_global = calibration.get("devices_on_global", {})
    if sum(on_global.values()):
        figures += (
            f"; {sum(on_global.values()):,} devices scored by the global detector ({on_global['too_few_rows']:,} "
            f"with too few training readings, {on_global['worse_than_global']:,} whose own did worse held back)"
        )
    incidents = metrics.get("incidents", {})
    if incidents.get("incident_precision") is not None:
        figures += (
            f"; {incidents['incidents']:,} incidents, precision {incidents['incident_precision']:.2f}, recall "
            f"{incidents['incident_recall']:.2f} ({incidents['faults_found']:,} of {incidents['faults']:,} faults)"
        )
    elif incidents:
        figures += f"; {incidents['incidents']:,} incidents"
    state = "current" if publication.current else f"stored, not current (current: {publication.current_version})"
    return "\n".join(
        [
            f"read {windows.read.records:,} records in {outcome.read_s:.1f} s; trained on {int(windows.train.sum()):,}"
            f" in {outcome.fit_s:.1f} s; evaluated on {int(windows.evaluate.sum()):,}: {figures}",
            f"published {publication.name} version {publication.version} ({state}): {publication.reason}",
            f"  {publication.path}" + ("" if outcome.announced else "  (announcement failed: see the log)"),
        ]
    )
