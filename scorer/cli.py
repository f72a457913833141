"""`anomstream score`: one member of the scorer consumer group (exactly-once by default).

Every flag defaults from an environment variable (shown in ``--help``). Exit status: 0 after a SIGTERM
(the batch in hand is finished and committed, the group left cleanly) or ``--idle-exit``; 1 on an error
that retrying cannot fix (a fatal Kafka error, a bad setting); 130 after Ctrl-C.
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
    masked,
    parse_settings,
)

log = logging.getLogger(__name__)

EPILOG = """examples:
  anomstream score                                   # serve the latest model, exactly-once
  anomstream score --model valve_iforest --idle-exit 15
  ANOMSTREAM_DEVICE=cuda anomstream score --metrics-host 0.0.0.0 --metrics-port 9400
"""


def add_parser(subparsers: Any) -> None:
    """Register ``score``."""
    from anomstream.scoring.settings import ScorerSettings

    settings = (ScorerSettings, TopicSettings, ModelStoreSettings, KafkaSettings)
    add_command(subparsers, "score", __doc__, EPILOG, settings, run)


def run(args: argparse.Namespace) -> int:
    """Run one scorer with the parsed flags; returns the exit status."""
    from anomstream.cli import StopOnSignals
    from anomstream.model_store import ModelStore
    from anomstream.scorer import Scorer
    from anomstream.scoring.settings import ScorerSettings

    settings, topics, store, kafka = parse_settings(
        args, "score", ScorerSettings, TopicSettings, ModelStoreSettings, KafkaSettings
    )
    log.info("scoring with %s", masked(settings))
    with StopOnSignals() as signals:
        scorer = Scorer(settings, kafka, topics, ModelStore(store.model_dir, store.store_key()), stop=signals.event)
        report = scorer.run()
        if signals.signal_name:
            report.stopped_by = signals.signal_name
    print(report.summary(), flush=True)
    return 130 if signals.signal_name == "SIGINT" else 0
