"""Fleets: 10,000 devices x 100 readings, each device with its own model, against one global model.

For each detector (``--detectors``, default ``pca,iforest``; iforest with ``--trees`` 50):

1. train: ``AnomalyModel.fit(per_device=True, jobs=-1)`` on the whole stream's rows (every device gets its
   own detector unless it falls back to the global one), then ``ModelStore.publish``; wall seconds;
2. store: the size of the published version on disk;
3. serve: ``anomstream score`` (a separate process, exactly-once) over the 1,000,000 records already in the
   topic: records/s from its first record consumed to its last batch committed, peak RSS (``VmHWM``), and
   ready: seconds from starting the process to its first batch committed (loading the model included);
4. the same scorer with one global model of the same detector on the same stream, side by side.

Prints a table, then one JSON object on the last line: per detector ``train_s``, ``store_mb``,
``records_per_s``, ``global_records_per_s``, ``rss_mb``, ``ready_s`` (and details). Goals (issue "fleets"):
train <= 120 s, >= 50,000 records/s and >= 0.6 x global, RSS <= 1,000 MB, ready <= 10 s. Needs the local
stack: ``eval "$(anomstream stack env)"``. All topics are fresh and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import Run, finish_scorer, start_scorer  # noqa: E402  (bench/score.py: the scorer harness)

from anomstream.config import KafkaSettings  # noqa: E402
from anomstream.model import AnomalyModel  # noqa: E402
from anomstream.model_store import ModelStore  # noqa: E402
from anomstream.producer import ProducerSettings, run_producer  # noqa: E402
from anomstream.synthetic import FleetSpec, generate_fleet  # noqa: E402
from anomstream.topics import delete_topics  # noqa: E402

console = Console(stderr=True)


def serve(run: Run, telemetry: str, model_name: str, timeout_s: float) -> dict[str, Any]:
    """One scorer process over the whole topic; its throughput, peak RSS and time to its first batch."""
    anomalies = run.topic(f"anomalies_{model_name}")
    log = run.store_dir / f"scorer-{model_name}.log"
    started = time.time()
    process = start_scorer(run.scorer_env(telemetry, anomalies), log, "--model", model_name)
    figures = finish_scorer(process, log, timeout_s)
    first = _first_commit(log)
    figures["ready_s"] = first - started if first else float("nan")
    if figures["exit"] != 0 or figures["records"] == 0:
        raise RuntimeError(f"the scorer of {model_name} failed (exit {figures['exit']}): {log.read_text()[-2000:]}")
    return figures


def _first_commit(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"scorer stopped' in line:
            value = json.loads(line).get("first_commit_at")
            return float(value) if value is not None else None
    return None


def one_detector(run: Run, telemetry: str, rows: Any, detector: str) -> dict[str, Any]:
    args = run.args
    params = {"n_estimators": args.trees} if detector == "iforest" else {}
    store = ModelStore(run.store_dir)
    console.log(f"{detector}: fitting {args.devices:,} device models")
    began = time.perf_counter()
    model = AnomalyModel.fit(rows, detector, per_device=True, params=params, jobs=-1)
    fleet_name = f"fleet_{detector}"
    version = store.publish(fleet_name, model, promote="always")
    train_s = time.perf_counter() - began
    on_global = model.calibration.get("devices_on_global", {})
    folder = version.path
    store_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    del model
    console.log(f"{detector}: trained in {train_s:.1f} s, {store_mb:.1f} MB; fitting the global model")
    global_name = f"global_{detector}"
    store.publish(global_name, AnomalyModel.fit(rows, detector, params=params), promote="always")
    console.log(f"{detector}: serving the fleet model")
    fleet = serve(run, telemetry, fleet_name, args.timeout_s)
    console.log(fleet)
    console.log(f"{detector}: serving the global model")
    global_ = serve(run, telemetry, global_name, args.timeout_s)
    console.log(global_)
    return {
        "train_s": round(train_s, 1),
        "store_mb": round(store_mb, 1),
        "records_per_s": round(fleet["records_per_s"]),
        "global_records_per_s": round(global_["records_per_s"]),
        "ratio_vs_global": round(fleet["records_per_s"] / global_["records_per_s"], 3),
        "rss_mb": round(fleet["rss_mb"], 1),
        "global_rss_mb": round(global_["rss_mb"], 1),
        "ready_s": round(fleet["ready_s"], 2),
        "global_ready_s": round(global_["ready_s"], 2),
        "records": fleet["records"],
        "devices_on_global": on_global,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=100, help="readings per device")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--trees", type=int, default=50, help="Isolation Forest trees")
    parser.add_argument("--detectors", default="pca,iforest")
    parser.add_argument("--timeout-s", type=float, default=900, help="per scorer run")
    args = parser.parse_args()
    store_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    run = Run(KafkaSettings(), f"bench_fleet_{uuid.uuid4().hex[:8]}", store_dir, args)
    records = args.devices * args.readings
    figures: dict[str, dict[str, Any]] = {}
    try:
        telemetry = run.topic("telemetry")
        run.topic("models", 1, **{"cleanup.policy": "compact"})
        run.topic("dlq", 1)
        run.topic("incidents")
        spec = dict(devices=args.devices, records=records, channels=args.channels, seed=1)
        console.log(f"producing {records:,} records of {args.devices:,} devices")
        report = run_producer(ProducerSettings(source="synthetic", topic=telemetry, **spec), run.kafka,
                              show_progress=False)  # fmt: skip
        if not report.ok:
            raise RuntimeError(f"producing the bench records failed: {report.summary()}")
        rows = generate_fleet(FleetSpec(**spec))  # the records the producer sent
        for detector in args.detectors.split(","):
            figures[detector] = one_detector(run, telemetry, rows, detector)
    finally:
        delete_topics(run.kafka, run.topics)
        shutil.rmtree(run.store_dir, ignore_errors=True)
    table = Table(title=f"fleet: {args.devices:,} devices x {args.readings} readings, per-device models")
    for column in ("detector", "train s", "store MB", "records/s", "global records/s", "ratio", "RSS MB", "ready s"):
        table.add_column(column, justify="right")
    for detector, f in figures.items():
        table.add_row(detector, f"{f['train_s']:.1f}", f"{f['store_mb']:.1f}", f"{f['records_per_s']:,}",
                      f"{f['global_records_per_s']:,}", f"{f['ratio_vs_global']:.2f}", f"{f['rss_mb']:.0f}",
                      f"{f['ready_s']:.1f}")  # fmt: skip
    console.print(table)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
