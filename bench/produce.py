"""Producer throughput: Avro-encoded synthetic records vs. the same producer sending pre-encoded bytes.

Both runs use the same run loop (``anomstream.producer.produce_batches``), the same producer settings
(``producer.make_producer``: idempotent, lz4, linger) and a fresh 6-partition topic each; the only
difference is that the ceiling's values were encoded before the clock started. The synthetic fleet is
generated beforehand for both, so neither figure includes generation. Rounds alternate (ceiling, Avro, ...)
and the best round of each counts, which evens out a machine shared with other work.

Prints a table, then one JSON object on the last line: ``records_per_s``, ``ceiling_records_per_s``,
``ratio`` (and details). Needs the local stack: ``eval "$(anomstream stack env)"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable

from confluent_kafka.admin import NewTopic

from anomstream.config import KafkaSettings
from anomstream.kafka_config import registry_client
from anomstream.producer import ProduceReport, make_producer, produce_batches
from anomstream.serde import TelemetryEncoder
from anomstream.synthetic import FleetSpec, iter_fleet
from anomstream.telemetry import TelemetryBatch
from anomstream.topics import delete_topics, ensure_topics

CHUNK_ROWS = 65_536


def timed_run(
    kafka: KafkaSettings, topic: str, batches: list[TelemetryBatch], encode: Callable[[TelemetryBatch], list[bytes]]
) -> ProduceReport:
    """Produce ``batches`` to ``topic`` with a fresh producer; the report's elapsed time includes the flush."""
    report = ProduceReport(topic=topic)
    producer = make_producer(kafka, "anomstream-bench", report)
    produce_batches(producer, topic, batches, encode, report=report)
    return report


def pre_encoded(encoded: list[list[bytes]]) -> Callable[[TelemetryBatch], list[bytes]]:
    """An "encoder" handing out the values encoded before the clock started, chunk by chunk."""
    chunks = iter(encoded)
    return lambda _batch: next(chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records per run (default 1,000,000)")
    parser.add_argument("--channels", type=int, default=8, help="channels per record (default 8)")
    parser.add_argument("--devices", type=int, default=100, help="synthetic devices (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each; best counts (default 3)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting rounds after this (default 240)")
    args = parser.parse_args()
    kafka = KafkaSettings()
    spec = FleetSpec(devices=args.devices, records=args.records, channels=args.channels, seed=1)

    started = time.perf_counter()
    batches = list(iter_fleet(spec, chunk_rows=CHUNK_ROWS))
    generate_s = time.perf_counter() - started

    tag = f"bench_produce_{uuid.uuid4().hex[:8]}"
    topics = [f"{tag}_{kind}_{r}" for r in range(args.rounds) for kind in ("ceiling", "avro")]
    ensure_topics(kafka, [NewTopic(t, 6, 1) for t in topics])
    encoder = TelemetryEncoder(registry_client(kafka), f"{tag}_avro")
    started = time.perf_counter()
    encoded = [encoder.encode(batch) for batch in batches]
    encode_s = time.perf_counter() - started

    ceiling: list[ProduceReport] = []
    avro: list[ProduceReport] = []
    try:
        for r in range(args.rounds):
            if r and time.perf_counter() - started > args.budget_s:
                break
            ceiling.append(timed_run(kafka, f"{tag}_ceiling_{r}", batches, pre_encoded(encoded)))
            avro.append(timed_run(kafka, f"{tag}_avro_{r}", batches, encoder.encode))
    finally:
        delete_topics(kafka, topics)

    best_ceiling = max(ceiling, key=lambda rep: rep.delivered / rep.elapsed_s)
    best_avro = max(avro, key=lambda rep: rep.delivered / rep.elapsed_s)
    figures = {
        "records": args.records,
        "channels": args.channels,
        "devices": args.devices,
        "rounds": len(avro),
        "records_per_s": round(best_avro.delivered / best_avro.elapsed_s),
        "ceiling_records_per_s": round(best_ceiling.delivered / best_ceiling.elapsed_s),
        "encode_records_per_s": round(args.records / encode_s),
        "generate_records_per_s": round(args.records / generate_s),
        "bytes_per_record": round(sum(len(v) for chunk in encoded for v in chunk) / args.records, 1),
        "all_delivered": all(rep.ok and rep.delivered == args.records for rep in ceiling + avro),
    }
    figures["ratio"] = round(figures["records_per_s"] / figures["ceiling_records_per_s"], 3)

    print(f"producer throughput, {args.records:,} records x {args.channels} channels, {args.devices} devices")
    print(f"{'run':<34}{'records/s':>14}{'seconds':>10}{'delivered':>12}")
    for r, (c, a) in enumerate(zip(ceiling, avro, strict=False)):
        for label, rep in ((f"pre-encoded bytes (ceiling) #{r + 1}", c), (f"Avro encode + produce #{r + 1}", a)):
            print(f"{label:<34}{rep.delivered / rep.elapsed_s:>14,.0f}{rep.elapsed_s:>10.2f}{rep.delivered:>12,}")
    print(f"{'Avro encoding alone':<34}{figures['encode_records_per_s']:>14,}")
    print(f"{'synthetic generation alone':<34}{figures['generate_records_per_s']:>14,}")
    print(f"ratio (best Avro / best ceiling): {figures['ratio']:.2f}; {figures['bytes_per_record']} bytes/record")
    print(json.dumps(figures))
    return 0 if figures["all_delivered"] else 1


if __name__ == "__main__":
    sys.exit(main())
