"""The closing summary of `make run`: records in, anomalies and incidents out, dead letters, quality against
the labels.

Usage: ``python -m anomstream.run_summary --anomalies FILE.jsonl [--incidents FILE.jsonl] [--scorer-logs LOG
...]``, with the topics and model store given by the usual environment variables.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from anomstream.alarms import alarm_quality, incident_quality
from anomstream.config import KafkaSettings, ModelStoreSettings, TopicSettings
from anomstream.kafka_config import consumer_config
from anomstream.model_store import ModelStore
from anomstream.topic_window import read_topic


def count_committed(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> int:
    """Committed records in ``topic`` (read_committed: transaction markers and aborted records excluded)."""
    consumer = Consumer(consumer_config(kafka, f"anomstream-summary-{uuid.uuid4().hex[:8]}", "anomstream-summary"))
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        count, done = 0, {p for p, end in ends.items() if end == 0}
        while len(done) < len(partitions):
            messages = consumer.consume(10_000, 2.0)
            if not messages:  # the last offsets may be transaction markers, which are never delivered
                break
            for message in messages:
                if message.error() is None:
                    count += 1
                    if (message.offset() or 0) + 1 >= ends[message.partition() or 0]:
                        done.add(message.partition())
        return count
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    """Print the summary table; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anomalies", type=Path, required=True, help="`anomstream tail --json` output")
    parser.add_argument("--incidents", type=Path, default=None, help="`anomstream tail --incidents --json` output")
    parser.add_argument("--scorer-logs", type=Path, nargs="*", default=[], help="scorer logs (for metrics URLs)")
    args = parser.parse_args(argv)
    kafka, topics, store = KafkaSettings(), TopicSettings(), ModelStoreSettings()

    telemetry = read_topic(kafka, topics.telemetry_topic, client_id="anomstream-summary")
    labels = telemetry.batch.label
    anomalies = [json.loads(line) for line in args.anomalies.read_text().splitlines() if line.startswith("{")]
    flagged_labels = np.array([a.get("label") if a.get("label") is not None else -1 for a in anomalies])
    tp = int((flagged_labels == 1).sum())
    fp = int((flagged_labels == 0).sum())
    positives = int((labels == 1).sum())
    dead_letters = count_committed(kafka, topics.dlq_topic)

    table = Table(title="anomstream run summary", show_header=False)
    table.add_row("records in", f"{telemetry.records:,} on {topics.telemetry_topic}")
    table.add_row("anomalies out", f"{len(anomalies):,} on {topics.anomaly_topic}")
    table.add_row("dead letters", f"{dead_letters:,} on {topics.dlq_topic}")
    incidents = _last_events(args.incidents) if args.incidents is not None else []
    if args.incidents is not None:
        closed = sum(e["state"] == "closed" for e in incidents)
        per_incident = len(anomalies) / len(incidents) if incidents else 0.0
        table.add_row("incidents out", f"{len(incidents):,} on {topics.incident_topic} ({closed:,} closed, "
                      f"{len(incidents) - closed:,} still open); {per_incident:,.1f} anomaly records per incident")
    if positives:
        precision = tp / max(tp + fp, 1)
        recall = tp / positives
        table.add_row("labelled readings", f"{int((labels >= 0).sum()):,} ({positives:,} anomalous)")
        table.add_row("precision / recall", f"{precision:.3f} / {recall:.3f} (TP {tp:,}, FP {fp:,})")
        batch = telemetry.batch
        flagged = pd.MultiIndex.from_arrays([batch.device_id, batch.seq]).isin(
            [(a["device_id"], a["seq"]) for a in anomalies]
        )
        quality = alarm_quality(batch.device_id, labels, flagged)
        table.add_row(
            "alarm precision / recall",
            f"{quality['alarm_precision']:.3f} / {quality['alarm_recall']:.3f} ({quality['true_alarms']:,} of "
            f"{quality['alarms']:,} alarms overlap a fault; {quality['faults_found']:,} of {quality['faults']:,} "
            "faults raised one)",
        )
        if args.incidents is not None:
            spans = [(e["device_id"], _ms(e["start_time"]), _ms(e["end_time"])) for e in incidents]
            q = incident_quality(batch.device_id, batch.event_time_ms, labels, spans)
            delay = "" if q["delay_median_s"] is None else (
                f"; fault start to incident open: median {q['delay_median_s']:.0f} s, p95 {q['delay_p95_s']:.0f} s")
            table.add_row(
                "incident precision / recall",
                f"{q['incident_precision']:.3f} / {q['incident_recall']:.3f} ({q['true_incidents']:,} of "
                f"{q['incidents']:,} incidents overlap a fault; {q['faults_found']:,} of {q['faults']:,} faults "
                f"found{delay})",
            )
    model_store = ModelStore(store.model_dir, store.store_key())
    name = model_store.latest_name()
    if name is not None:
        version = model_store.current_version(name)
        table.add_row("model", f"{name} v{version}")
        for report in sorted((store.model_dir / name / str(version)).glob("*.png")):
            table.add_row("evaluation plot", str(report))
    for log in args.scorer_logs:
        urls = re.findall(r"https?://[\w.:-]+/metrics", log.read_text(errors="replace"))
        if urls:
            table.add_row(f"metrics ({log.stem})", urls[0] + " (while running)")
    Console().print(table)
    return 0


def _last_events(path: Path) -> list[dict[str, Any]]:
    """The last event of each incident in `anomstream tail --incidents --json` output."""
    last: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            last[event["incident_id"]] = event
    return list(last.values())


def _ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


if __name__ == "__main__":
    raise SystemExit(main())
