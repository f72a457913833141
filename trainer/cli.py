"""`anomstream train`: fit a model on a window of the telemetry topic, evaluate it on a later one, publish it.

Every flag defaults from an environment variable (shown in ``--help``). Exit status: 0 when the model was
published (made current or, refused by the promotion gate, stored only; the summary says which), 1 when
it could not be read, fitted or published, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, get_args

from pydantic import ValidationError

from anomstream.config import (
    KafkaSettings,
    ModelStoreSettings,
    TopicSettings,
    add_settings_arguments,
    settings_from_args,
)
from anomstream.model_store import ModelStore
from anomstream.trainer import TrainOutcome, TrainSettings, settings_error, train

log = logging.getLogger(__name__)

EPILOG = """examples:
  anomstream train --model iforest --per-device --train-records 400 --name valves
  anomstream train --model pca --train-start 2020-03-09T10:00 --train-end 2020-03-09T11:00 --eval-end 2020-03-09T12:00
  anomstream train --model conv-ae --train-records 5000 --promote never --params '{"epochs": 20}'
"""


def add_parser(subparsers: Any) -> None:
    """Register ``train``."""
    parser = subparsers.add_parser(
        "train",
        help="fit a model on a window of the telemetry topic, evaluate it on a later window and publish it",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    add_settings_arguments(parser, TopicSettings)
    add_settings_arguments(parser, ModelStoreSettings)
    add_settings_arguments(parser, KafkaSettings)
    parser.set_defaults(func=run)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainSettings`` field: switches for booleans, choices for literals, ``[env: ...]`` help."""
    current = TrainSettings.model_construct()
    group = parser.add_argument_group("training")
    for name, field in TrainSettings.model_fields.items():
        env_name = str(field.validation_alias.choices[0])  # type: ignore[union-attr]
        default = os.environ.get(env_name, getattr(current, name))
        shown = default.isoformat() if hasattr(default, "isoformat") else default
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} [env: {env_name}, default: {shown}]"
        if field.annotation is bool:
            group.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        choices = get_args(field.annotation) if str(field.annotation).startswith("typing.Literal") else None
        group.add_argument(
            flag, dest=name, default=None, choices=choices, metavar=None if choices else env_name, help=help_text
        )


def run(args: argparse.Namespace) -> int:
    """Train with the parsed flags; returns the exit status."""
    try:
        settings = settings_from_args(TrainSettings, args)
        kafka = settings_from_args(KafkaSettings, args)
        topics = settings_from_args(TopicSettings, args)
        store_settings = settings_from_args(ModelStoreSettings, args)
    except (ValidationError, ValueError) as error:
        raise settings_error(error) from error
    outcome = train(settings, kafka, topics, ModelStore(store_settings.model_dir))
    print(summary(outcome), flush=True)
    return 0


def summary(outcome: TrainOutcome) -> str:
    """A few lines for people: what was read, fitted, measured and published."""
    publication, windows = outcome.publication, outcome.windows
    metrics = outcome.metrics
    figures = f"flag rate {metrics['scores']['flag_rate']:.2%}"
    if metrics.get("f1") is not None:
        figures += f", F1 {metrics['f1']:.3f}, FAR {metrics['far']:.2f} %, MAR {metrics['mar']:.2f} %"
    state = "current" if publication.current else f"stored, not current (current: {publication.current_version})"
    return "\n".join(
        [
            f"read {windows.read.records:,} records in {outcome.read_s:.1f} s; trained on {int(windows.train.sum()):,}"
            f" in {outcome.fit_s:.1f} s; evaluated on {int(windows.evaluate.sum()):,}: {figures}",
            f"published {publication.name} version {publication.version} ({state}): {publication.reason}",
            f"  {publication.path}" + ("" if outcome.announced else "  (announcement failed: see the log)"),
        ]
    )
