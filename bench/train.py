"""Trainer speed: read 1,000,000 synthetic records from Kafka and fit an Isolation Forest on them.

A fresh 6-partition topic is filled with the producer library (``anomstream.producer.run_producer``, not
timed), then the trainer's own code path is timed: ``trainer.read_windows`` (fixed offset ranges from the
watermarks, fetch, Avro decode, rows grouped by device) with every record in the training window, and
``trainer.fit_model`` (``AnomalyModel.fit`` with the default ``iforest`` configuration: features, forest,
calibration of the threshold; scikit-learn is imported before the clock starts). Goal: read + fit within
30 s on this machine. The topic is deleted at the end, and the whole run is bounded by ``--budget-s`` (it
fails rather than hangs).

Prints a table, then one JSON object on the last line: ``read_records_per_s``, ``fit_s``, ``total_s`` (and
details). Needs the local stack: ``eval "$(anomstream stack env)"``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid
from types import FrameType

from confluent_kafka.admin import NewTopic

from anomstream.config import KafkaSettings
from anomstream.detectors import detector_class
from anomstream.producer import ProducerSettings, run_producer
from anomstream.topics import delete_topics, ensure_topics
from anomstream.trainer import TrainSettings, fit_model, read_windows

GOAL_S = 30.0


class BudgetExceeded(Exception):
    """The run took longer than ``--budget-s``."""


def _over_budget(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to read and fit (default 1,000,000)")
    parser.add_argument("--devices", type=int, default=100, help="synthetic devices (default 100)")
    parser.add_argument("--channels", type=int, default=8, help="channels per record (default 8)")
    parser.add_argument("--budget-s", type=int, default=600, help="give up after this many seconds (default 600)")
    args = parser.parse_args()
    kafka = KafkaSettings()
    topic = f"bench_train_{uuid.uuid4().hex[:8]}"
    signal.signal(signal.SIGALRM, _over_budget)
    signal.alarm(args.budget_s)
    ensure_topics(kafka, [NewTopic(topic, 6, 1)])
    try:
        figures = _run(kafka, topic, args)
    except BudgetExceeded:
        print(json.dumps({"error": f"over the {args.budget_s} s budget", "records": args.records}))
        return 1
    finally:
        signal.alarm(0)
        delete_topics(kafka, [topic])
    _print_table(figures)
    print(json.dumps(figures))
    return 0 if figures["records_read"] == args.records else 1


def _run(kafka: KafkaSettings, topic: str, args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    source = ProducerSettings(
        source="synthetic", topic=topic, devices=args.devices, records=args.records, channels=args.channels, seed=1
    )
    produced = run_producer(source, kafka, show_progress=False)
    produce_s = time.perf_counter() - started
    if not produced.ok:
        raise SystemExit(f"producing the bench data failed: {produced.summary()}")
    # every record trains: the largest per-device count is an upper bound on any device's records
    settings = TrainSettings(model="iforest", train_records=-(-args.records // args.devices), seed=0)
    detector_class(settings.model)  # import scikit-learn now: a once-per-process cost, not part of fitting

    started = time.perf_counter()
    windows = read_windows(settings, kafka, topic)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    model = fit_model(windows, settings)
    fit_s = time.perf_counter() - started
    total_s = read_s + fit_s
    return {
        "records": args.records,
        "devices": args.devices,
        "channels": args.channels,
        "records_read": len(windows.read.batch),
        "records_trained": int(windows.train.sum()),
        "features": model.pipeline.n_features,
        "produce_s": round(produce_s, 2),
        "read_s": round(read_s, 2),
        "read_records_per_s": round(len(windows.read.batch) / read_s),
        "fit_s": round(fit_s, 2),
        "total_s": round(total_s, 2),
        "goal_s": GOAL_S,
        "goal_met": total_s <= GOAL_S,
    }


def _print_table(figures: dict[str, object]) -> None:
    print(
        f"trainer: {figures['records']:,} synthetic records ({figures['devices']} devices x "
        f"{figures['channels']} channels), Isolation Forest on {figures['features']} features"
    )
    print(f"{'step':<40}{'seconds':>10}{'records/s':>14}")
    print(f"{'produce (not timed)':<40}{figures['produce_s']:>10.2f}")
    print(f"{'read + decode + group by device':<40}{figures['read_s']:>10.2f}{figures['read_records_per_s']:>14,}")
    print(f"{'fit (features, forest, threshold)':<40}{figures['fit_s']:>10.2f}")
    verdict = "met" if figures["goal_met"] else "NOT met"
    print(f"{'total (read + fit)':<40}{figures['total_s']:>10.2f}   goal <= {GOAL_S:.0f} s: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
