"""Scorer throughput and latency: the tutorial's loop vs. raw Kafka pass-through vs. `anomstream score`.

On one topic of 1,000,000 synthetic records (8 channels, 100 devices), side by side:

(a) the tutorial's way: poll one record, deserialize it (confluent-kafka's AvroDeserializer), make a one-row
    pandas DataFrame, ``IsolationForest.predict`` it, produce a JSON alert when it is -1. Measured on a
    sample (``--tutorial-records``, bounded by ``--tutorial-budget-s``) and extrapolated to records/s.
(b) raw pass-through: consume and produce the same records' bytes, no decoding, no scoring (batched
    ``consume``, the project's producer settings, offsets committed per batch).
(c) the scorer: ``anomstream score`` (a separate process), Isolation Forest, exactly-once (transactions).
    Records/s from its first record consumed to its last batch committed; peak RSS from ``wait4``.

(b) and (c) run in alternating rounds (``--rounds``, 2) and the best round of each counts, as in
``bench/produce.py``: on a machine shared with other work, the load can change between two runs. The peak
RSS is the highest over all scorer runs. Both models have the same number of trees (``--trees``,
scikit-learn's default 100); the scorer's model is the project's (rolling-window features, smoothing,
alarm hold), fitted on the first 50,000 records.

Then the latency from produce to anomaly: a scorer on fresh topics, records produced at ``--latency-rate``
(20,000/s) for ``--latency-s`` seconds with their event time set to the moment they are sent; a
``read_committed`` consumer of the anomaly topic takes receive time minus event time for each anomaly.

With CUDA (``torch.cuda.is_available()``) the sequence autoencoder's scorer runs on CUDA and on the CPU
over the same 200,000 records.

Prints a table, then one JSON object on the last line: ``tutorial_records_per_s``,
``passthrough_records_per_s``, ``scorer_records_per_s``, ``ratio_vs_tutorial``, ``ratio_vs_passthrough``,
``p50_ms``, ``p99_ms``, ``rss_mb`` (and details). Needs the local stack: ``eval "$(anomstream stack env)"``.
All topics are fresh and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from rich.console import Console
from rich.table import Table

from anomstream.config import KafkaSettings
from anomstream.kafka_config import consumer_config, producer_config, registry_client
from anomstream.model import AnomalyModel
from anomstream.model_store import ModelStore
from anomstream.producer import PRODUCER_OVERRIDES, ProducerSettings, run_producer
from anomstream.serde import TelemetryEncoder
from anomstream.synthetic import FleetSpec, generate_fleet, iter_fleet
from anomstream.telemetry import TelemetryBatch
from anomstream.topics import delete_topics, ensure_topics

console = Console(stderr=True)
TRAIN_ROWS = 50_000
GPU_RECORDS = 200_000


@dataclass
class Run:
    """Names and settings shared by the bench's steps."""

    kafka: KafkaSettings
    tag: str
    store_dir: Path
    args: argparse.Namespace
    topics: list[str] = field(default_factory=list)

    def topic(self, kind: str, partitions: int = 6, **config: str) -> str:
        name = f"{self.tag}_{kind}"
        ensure_topics(self.kafka, [NewTopic(name, partitions, 1, config=config)])
        self.topics.append(name)
        return name

    def scorer_env(self, telemetry: str, anomalies: str, **extra: str) -> dict[str, str]:
        return os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.kafka.schema_registry_url,
            "ANOMSTREAM_TELEMETRY_TOPIC": telemetry,
            "ANOMSTREAM_ANOMALY_TOPIC": anomalies,
            "ANOMSTREAM_DLQ_TOPIC": f"{self.tag}_dlq",
            "ANOMSTREAM_MODELS_TOPIC": f"{self.tag}_models",
            "ANOMSTREAM_MODEL_DIR": str(self.store_dir),
            "ANOMSTREAM_SCORER_GROUP": f"{self.tag}-{uuid.uuid4().hex[:6]}",
        } | extra


# -- (a) the tutorial ------------------------------------------------------------------------------------------


def tutorial(run: Run, telemetry: str, training: TelemetryBatch) -> dict[str, Any]:
    """One poll, one deserialize, one one-row DataFrame, one ``predict`` per record."""
    from sklearn.ensemble import IsolationForest

    columns = list(training.channels)
    frame = pd.DataFrame(training.values, columns=columns)
    model = IsolationForest(n_estimators=run.args.trees, random_state=0).fit(frame)
    consumer = Consumer(consumer_config(run.kafka, f"{run.tag}-tutorial", "bench-tutorial"))
    consumer.subscribe([telemetry])
    deserialize = AvroDeserializer(registry_client(run.kafka))
    producer = Producer(producer_config(run.kafka, "bench-tutorial"))
    alerts_topic = run.topic("tutorial_alerts")
    count, alerts, first = 0, 0, None
    deadline = time.monotonic() + 60 + run.args.tutorial_budget_s
    while count < run.args.tutorial_records and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        first = first or time.perf_counter()
        record = deserialize(message.value(), SerializationContext(telemetry, MessageField.VALUE))
        row = pd.DataFrame([record["channels"]])[columns]
        if model.predict(row)[0] == -1:
            producer.produce(alerts_topic, json.dumps({"device_id": record["device_id"]}), key=message.key())
            alerts += 1
        producer.poll(0)
        count += 1
        if first and time.perf_counter() - first > run.args.tutorial_budget_s:
            break
    elapsed = time.perf_counter() - (first or time.perf_counter())
    producer.flush(30)
    consumer.close()
    rate = count / elapsed if elapsed else 0.0
    return {"records": count, "seconds": elapsed, "records_per_s": rate, "alerts": alerts}


# -- (b) pass-through ------------------------------------------------------------------------------------------


def passthrough(run: Run, telemetry: str, records: int, round_: int = 0) -> dict[str, Any]:
    """Consume every record and produce its key and value unchanged to another topic."""
    target = run.topic(f"passthrough_{round_}")
    consumer = Consumer(consumer_config(run.kafka, f"{run.tag}-passthrough-{round_}", "bench-passthrough", **{
        "fetch.wait.max.ms": 20}))  # fmt: skip
    producer = Producer(producer_config(run.kafka, "bench-passthrough", **PRODUCER_OVERRIDES))
    consumer.subscribe([telemetry])
    count, first, last_seen = 0, None, time.monotonic()
    while count < records and time.monotonic() - last_seen < 60:
        messages = consumer.consume(10_000, 0.5)
        if not messages:
            continue
        first, last_seen = first or time.perf_counter(), time.monotonic()
        for message in messages:
            while True:
                try:
                    producer.produce(target, message.value(), message.key())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        consumer.commit(asynchronous=True)
        count += len(messages)
    producer.flush(60)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    return {"records": count, "seconds": elapsed, "records_per_s": count / elapsed if elapsed else 0.0}


# -- (c) the scorer, and its latency ------------------------------------------------------------------------------


def start_scorer(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "anomstream", "--log-format", "json", "score", "--idle-exit", "5", *args]
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish_scorer(process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> dict[str, Any]:
    """Wait for the scorer (killed after ``timeout_s``); its summary, CPU time and peak RSS.

    The peak RSS is the process's own high-water mark (``VmHWM`` in ``/proc/PID/status``), read until it
    exits: ``wait4``'s ``ru_maxrss`` is the largest of all children so far on some kernels (gVisor).
    """
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    peak_kb = [0]
    watcher = threading.Thread(target=_watch_peak_rss, args=(process.pid, peak_kb), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    watcher.join(2)
    process.returncode = os.waitstatus_to_exitcode(status)
    summary = next((e for e in _log_entries(log) if str(e.get("message", "")).startswith("scorer stopped")), {})
    scored, active = int(summary.get("records_scored", 0)), float(summary.get("active_s", 0.0))
    return {
        "exit": process.returncode,
        "records": scored,
        "seconds": active,
        "records_per_s": scored / active if active else 0.0,
        "anomalies": int(summary.get("anomalies", 0)),
        "rss_mb": (peak_kb[0] or usage.ru_maxrss) / 1024,  # kilobytes on Linux
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def _watch_peak_rss(pid: int, peak_kb: list[int]) -> None:
    """Keep ``peak_kb[0]`` at the process's ``VmHWM`` until it is gone."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
        if "State:\tZ" in text:  # exited, not yet reaped: the last reading stands
            return
        time.sleep(0.2)


def _log_entries(log: Path) -> list[dict[str, Any]]:
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def wait_for_assignment(process: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if any(str(e.get("message", "")).startswith("assigned partitions [") and "[]" not in e["message"]
               for e in _log_entries(log)):  # fmt: skip
            return
        time.sleep(0.2)
    raise RuntimeError(f"the scorer did not get partitions: {log.read_text()[-2000:]}")


def scorer_throughput(
    run: Run, telemetry: str, model_name: str, timeout_s: float, round_: int = 0, **env: str
) -> dict[str, Any]:
    anomalies = run.topic(f"anomalies_{model_name}_{env.get('ANOMSTREAM_DEVICE', 'cpu')}_{round_}")
    log = run.store_dir / f"scorer-{anomalies}.log"
    process = start_scorer(run.scorer_env(telemetry, anomalies, **env), log, "--model", model_name)
    return finish_scorer(process, log, timeout_s)


def latency(run: Run, model_name: str) -> dict[str, Any]:
    """Produce at a fixed rate with event time = send time; anomaly receive time minus event time.

    A warm-up second, then ``--latency-rounds`` rounds of ``--latency-s`` seconds with a pause between them,
    all from one scorer process. On a machine shared with other work a single stall dominates a p99, so,
    as ``bench/produce.py`` keeps its best round, the round with the lowest p99 is the figure; every round
    is in the table.
    """
    telemetry, anomalies = run.topic("latency_telemetry"), run.topic("latency_anomalies")
    log = run.store_dir / "scorer-latency.log"
    process = start_scorer(run.scorer_env(telemetry, anomalies), log, "--model", model_name)
    wait_for_assignment(process, log)
    reader = LatencyReader(run.kafka, anomalies)
    reader.start()
    rate, seconds = run.args.latency_rate, run.args.latency_s
    spec = FleetSpec(devices=run.args.devices, records=int(rate * (1 + seconds * run.args.latency_rounds)),
                     channels=run.args.channels, seed=2)  # fmt: skip
    rows = TelemetryBatch.concat(list(iter_fleet(spec)))
    windows = []
    for index, (start, end) in enumerate(_round_slices(int(rate), int(rate * seconds), run.args.latency_rounds)):
        began = time.time() * 1000
        paced_produce(run, telemetry, rows.take(slice(start, end)), rate)
        if index:  # round 0 is the warm-up
            windows.append((began, time.time() * 1000))
        time.sleep(1.0)
    result = finish_scorer(process, log, timeout_s=120)
    reader.stop()
    rounds = [_percentiles([d for e, d in reader.delays_ms if lo <= e <= hi]) for lo, hi in windows]
    best = min(rounds, key=lambda r: r["p99_ms"] if r["anomalies"] else float("inf"))
    busy_s = sum(hi - lo for lo, hi in windows) / 1000
    return best | {"sent": len(rows), "rounds": rounds, "rss_mb": result["rss_mb"], "cpu_s": result["cpu_s"],
                   "cpu_per_s_of_rounds": result["cpu_s"] / busy_s if busy_s else 0.0}  # fmt: skip


def _round_slices(warm_up: int, per_round: int, rounds: int) -> list[tuple[int, int]]:
    bounds = [0, warm_up, *(warm_up + per_round * (r + 1) for r in range(rounds))]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _percentiles(delays_ms: list[float]) -> dict[str, Any]:
    if not delays_ms:
        return {"anomalies": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    p50, p99 = np.percentile(np.array(delays_ms), [50, 99])
    return {"anomalies": len(delays_ms), "p50_ms": float(p50), "p99_ms": float(p99)}


def paced_produce(run: Run, topic: str, rows: TelemetryBatch, rate: float) -> int:
    """Send ``rows`` at ``rate`` records/s in ~10 ms ticks, each record stamped with its send time."""
    encoder = TelemetryEncoder(registry_client(run.kafka), topic)
    producer = Producer(producer_config(run.kafka, "bench-latency", **PRODUCER_OVERRIDES, **{"linger.ms": 2}))
    per_tick, sent, started = max(int(rate / 100), 1), 0, time.perf_counter()
    keys = [str(d).encode() for d in rows.device_id]
    while sent < len(rows):
        due = int((time.perf_counter() - started) * rate)
        if due <= sent:
            time.sleep(0.002)
            continue
        end = min(len(rows), sent + max(due - sent, per_tick))
        chunk = rows.take(slice(sent, end))
        now_ms = int(time.time() * 1000)
        stamped = TelemetryBatch(chunk.device_id, np.full(len(chunk), now_ms, dtype=np.int64), chunk.seq,
                                 chunk.channels, chunk.values, chunk.label)  # fmt: skip
        for key, value in zip(keys[sent:end], encoder.encode(stamped), strict=True):
            producer.produce(topic, value, key)
        producer.poll(0)
        sent = end
    producer.flush(30)
    return sent


class LatencyReader(threading.Thread):
    """Reads the anomaly topic (read_committed) and notes receive time minus event time per anomaly."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(consumer_config(kafka, f"latency-{uuid.uuid4().hex[:6]}", "bench-latency-reader",
                                                 **{"fetch.wait.max.ms": 5}))  # fmt: skip
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.deserialize = AvroDeserializer(registry_client(kafka))
        self.topic, self._done = topic, threading.Event()
        self.delays_ms: list[tuple[float, float]] = []  # (event time, receive time - event time)

    def run(self) -> None:
        context = SerializationContext(self.topic, MessageField.VALUE)
        while not self._done.is_set():
            message = self.consumer.poll(0.05)  # returns at the first record (consume() would wait to fill up)
            if message is not None and message.error() is None:
                received = time.time() * 1000
                event_ms = self.deserialize(message.value(), context)["event_time"].timestamp() * 1000
                self.delays_ms.append((event_ms, received - event_ms))
        self.consumer.close()

    def stop(self) -> None:
        time.sleep(2)  # the last committed batch
        self._done.set()
        self.join(10)


# -- the run ---------------------------------------------------------------------------------------------------


def prepare(run: Run) -> tuple[str, TelemetryBatch]:
    """The 1M-record telemetry topic, and the models in the store; returns the topic and the training rows."""
    telemetry = run.topic("telemetry")
    run.topic("models", 1, **{"cleanup.policy": "compact"})
    run.topic("dlq", 1)
    spec = FleetSpec(devices=run.args.devices, records=TRAIN_ROWS, channels=run.args.channels, seed=1)
    training = generate_fleet(spec)
    source = ProducerSettings(source="synthetic", topic=telemetry, devices=run.args.devices, records=run.args.records,
                              channels=run.args.channels, seed=1)  # fmt: skip
    report = run_producer(source, run.kafka, show_progress=False)
    if not report.ok:
        raise RuntimeError(f"producing the bench records failed: {report.summary()}")
    model = AnomalyModel.fit(training, "iforest", params={"n_estimators": run.args.trees})
    ModelStore(run.store_dir).publish("bench_iforest", model, promote="always")
    return telemetry, training


def gpu_comparison(run: Run, training: TelemetryBatch) -> dict[str, Any]:
    """The sequence autoencoder's scorer on CUDA and on the CPU over the same records."""
    telemetry = run.topic("gpu_telemetry")
    source = ProducerSettings(source="synthetic", topic=telemetry, devices=run.args.devices, records=GPU_RECORDS,
                              channels=run.args.channels, seed=1)  # fmt: skip
    run_producer(source, run.kafka, show_progress=False)
    model = AnomalyModel.fit(training, "conv-ae", params={"max_epochs": 5})
    ModelStore(run.store_dir).publish("bench_conv_ae", model, promote="always")
    return {
        device: scorer_throughput(run, telemetry, "bench_conv_ae", 600, ANOMSTREAM_DEVICE=device)
        for device in ("cuda", "cpu")
    }


def report(figures: dict[str, Any]) -> None:
    table = Table(title="anomstream score vs. the tutorial loop and raw pass-through")
    for column in ("run", "records", "records/s", "ratio", "notes"):
        table.add_column(column, justify="left" if column in ("run", "notes") else "right")
    t, p, s = figures["tutorial"], figures["passthrough"], figures["scorer"]
    table.add_row("(a) tutorial: predict per record", f"{t['records']:,}", f"{t['records_per_s']:,.0f}", "1",
                  f"{figures['trees']} trees, one-row DataFrame, sample extrapolated")  # fmt: skip
    table.add_row("(b) raw pass-through", f"{p['records']:,}", f"{p['records_per_s']:,.0f}",
                  f"{p['records_per_s'] / t['records_per_s']:,.0f}x",
                  "consume + produce bytes; rounds " + _rates(figures["passthrough_rounds"]))  # fmt: skip
    table.add_row("(c) anomstream score, exactly-once", f"{s['records']:,}", f"{s['records_per_s']:,.0f}",
                  f"{figures['ratio_vs_tutorial']:,.0f}x", f"{figures['ratio_vs_passthrough']:.2f} of pass-through, "
                  f"{s['anomalies']:,} anomalies, peak RSS {s['rss_mb']:.0f} MB; rounds "
                  + _rates(figures["scorer_rounds"]))  # fmt: skip
    lat = figures["latency"]
    every = ", ".join(f"{r['p99_ms']:.0f}" for r in lat["rounds"])
    delays = f"best round p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms; p99 of each round {every} ms"
    offered = f"{figures['latency_rate']:,.0f} offered"
    table.add_row("latency, produce -> anomaly", f"{lat['sent']:,}", offered, "", delays)
    for device, gpu in figures.get("autoencoder", {}).items():
        table.add_row(f"conv-ae scorer on {device}", f"{gpu['records']:,}", f"{gpu['records_per_s']:,.0f}", "",
                      f"peak RSS {gpu['rss_mb']:.0f} MB")  # fmt: skip
    out = Console()
    (out if out.is_terminal else Console(width=160)).print(table)


def _rates(rounds: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['records_per_s']:,.0f}" for r in rounds) + " records/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--trees", type=int, default=100, help="Isolation Forest trees, both models")
    parser.add_argument("--tutorial-records", type=int, default=2_000)
    parser.add_argument("--tutorial-budget-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating (b)/(c) rounds; the best of each counts")
    parser.add_argument("--latency-rate", type=float, default=20_000)
    parser.add_argument("--latency-s", type=float, default=6.0, help="seconds per latency round")
    parser.add_argument("--latency-rounds", type=int, default=3)
    args = parser.parse_args()
    store_dir = Path(tempfile.mkdtemp(prefix="bench-score-"))
    run = Run(KafkaSettings(), f"bench_score_{uuid.uuid4().hex[:8]}", store_dir, args)
    try:
        console.log(f"producing {args.records:,} records and fitting the models")
        telemetry, training = prepare(run)
        console.log("(a) the tutorial loop")
        tutorial_figures = tutorial(run, telemetry, training)
        console.log(tutorial_figures)
        passthrough_rounds, scorer_rounds = [], []
        for round_ in range(args.rounds):  # alternating, so that both see the same share of a busy machine
            console.log(f"(b) raw pass-through, round {round_ + 1}")
            passthrough_rounds.append(passthrough(run, telemetry, args.records, round_))
            console.log(passthrough_rounds[-1])
            console.log(f"(c) anomstream score, round {round_ + 1}")
            scorer_rounds.append(scorer_throughput(run, telemetry, "bench_iforest", timeout_s=600, round_=round_))
            console.log(scorer_rounds[-1])
        passthrough_figures = max(passthrough_rounds, key=lambda r: r["records_per_s"])
        scorer_figures = max(scorer_rounds, key=lambda r: r["records_per_s"]) | {
            "rss_mb": max(r["rss_mb"] for r in scorer_rounds)  # the peak over every run, not the best run's
        }
        console.log(f"latency at {args.latency_rate:,.0f} records/s")
        latency_figures = latency(run, "bench_iforest")
        console.log(latency_figures)
        gpu = gpu_comparison(run, training) if _cuda() else {}
    finally:
        delete_topics(run.kafka, run.topics)
        shutil.rmtree(run.store_dir, ignore_errors=True)
    figures = {
        "tutorial": tutorial_figures, "passthrough": passthrough_figures, "scorer": scorer_figures,
        "passthrough_rounds": passthrough_rounds, "scorer_rounds": scorer_rounds,
        "latency": latency_figures, "latency_rate": args.latency_rate, "trees": args.trees, "autoencoder": gpu,
        "ratio_vs_tutorial": scorer_figures["records_per_s"] / tutorial_figures["records_per_s"],
        "ratio_vs_passthrough": scorer_figures["records_per_s"] / passthrough_figures["records_per_s"],
    }  # fmt: skip
    report(figures)
    print(json.dumps({
        "tutorial_records_per_s": round(tutorial_figures["records_per_s"], 1),
        "passthrough_records_per_s": round(passthrough_figures["records_per_s"]),
        "scorer_records_per_s": round(scorer_figures["records_per_s"]),
        "ratio_vs_tutorial": round(figures["ratio_vs_tutorial"], 1),
        "ratio_vs_passthrough": round(figures["ratio_vs_passthrough"], 3),
        "p50_ms": round(latency_figures["p50_ms"], 1),
        "p99_ms": round(latency_figures["p99_ms"], 1),
        "p99_ms_rounds": [round(r["p99_ms"], 1) for r in latency_figures["rounds"]],
        "rss_mb": round(scorer_figures["rss_mb"], 1),
        "records": scorer_figures["records"],
        "passthrough_rounds_records_per_s": [round(r["records_per_s"]) for r in passthrough_rounds],
        "scorer_rounds_records_per_s": [round(r["records_per_s"]) for r in scorer_rounds],
        "anomalies": scorer_figures["anomalies"],
        "trees": args.trees,
        "autoencoder_records_per_s": {d: round(g["records_per_s"]) for d, g in gpu.items()},
    }), flush=True)  # fmt: skip
    return 0


def _cuda() -> bool:
    if not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    sys.exit(main())
