"""The scorer's scoring step on CPU and, when present, CUDA: batches of a stream, history carried across them.

What a scorer does with each decoded batch, without the broker: :func:`anomstream.scoring.anomalies.score_batch`
(each device's history prepended, features, one model call for the whole batch, per-channel contributions
of the flagged rows, anomaly rows), then :meth:`DeviceHistory.advance`. A synthetic fleet is split into
consecutive batches of ``--batch`` readings and streamed through that step, as the scorer would, once per
detector and device. The models (Isolation Forest and the 1-D convolutional autoencoder, one global model
each, fitted on CPU on the fleet's clean twin) are saved and loaded onto each device, the path a scorer
takes (``ANOMSTREAM_DEVICE``). The flagged readings on CPU and CUDA must be the same set: the bench says
how many differ.

Decoding and Kafka are left out on purpose (``bench/score.py`` measures the whole scorer against the
broker on this machine); this isolates what the device changes. The first pass is a warm-up; the best of
``--repeats`` passes counts.

Prints a table, then one JSON object on the last line: ``{detector}_{device}_records_per_s``,
``{detector}_cuda_vs_cpu`` (null without a GPU), ``{detector}_anomalies`` and ``{detector}_differing_flags``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from anomstream.model import AnomalyModel
from anomstream.scoring.anomalies import score_batch
from anomstream.scoring.state import DeviceHistory
from anomstream.synthetic import FleetSpec, generate_fleet
from anomstream.telemetry import TelemetryBatch

DETECTORS = {"iforest": {}, "conv-ae": {"max_epochs": 3}}


def stream(model: AnomalyModel, fleet: TelemetryBatch, batch_rows: int) -> tuple[float, set[tuple[str, int]]]:
    """Seconds to score ``fleet`` in batches of ``batch_rows`` through the scorer's step; the flagged readings."""
    history = DeviceHistory(model.context, model.channels)
    partition = np.zeros(batch_rows, dtype=np.int32)
    flagged: set[tuple[str, int]] = set()
    start = time.perf_counter()
    for first in range(0, len(fleet), batch_rows):
        batch = fleet.take(slice(first, first + batch_rows))
        offset = np.arange(first, first + len(batch), dtype=np.int64)
        scored = score_batch(model, "bench", 1, history, batch, "telemetry", partition[: len(batch)], offset, 0)
        history.advance(batch, partition[: len(batch)], scored.raw)
        flagged.update(zip(scored.anomalies.device_id.tolist(), scored.anomalies.seq.tolist(), strict=True))
    return time.perf_counter() - start, flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400_000, help="readings streamed (default 400,000)")
    parser.add_argument("--devices", type=int, default=100, help="devices in the fleet (default 100)")
    parser.add_argument("--channels", type=int, default=8, help="channels per reading (default 8)")
    parser.add_argument("--batch", type=int, default=20_000, help="readings per batch, the scorer's default")
    parser.add_argument("--train-records", type=int, default=100_000, help="clean readings fitted (default 100k)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes after the warm-up (default 2)")
    args = parser.parse_args()

    import torch  # after argparse: --help stays quick

    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    spec = FleetSpec(devices=args.devices, records=args.records, channels=args.channels, seed=7, anomaly_rate=0.02)
    fleet = generate_fleet(spec)
    clean = generate_fleet(FleetSpec(devices=args.devices, records=args.train_records, channels=args.channels,
                                     seed=7, anomaly_rate=0.0))  # fmt: skip
    figures: dict[str, float | int | None] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for detector, params in DETECTORS.items():
            started = time.perf_counter()
            AnomalyModel.fit(clean, detector, per_device=False, seed=0, params=params).save(Path(tmp) / detector)
            fit_s = time.perf_counter() - started
            flags: dict[str, set[tuple[str, int]]] = {}
            for device in devices:
                model = AnomalyModel.load(Path(tmp) / detector, device=device)
                stream(model, fleet.take(slice(0, args.batch)), args.batch)  # warm-up: kernels, allocator, tables
                best = float("inf")
                for _ in range(max(1, args.repeats)):
                    seconds, flags[device] = stream(model, fleet, args.batch)
                    best = min(best, seconds)
                figures[f"{detector}_{device}_records_per_s"] = round(len(fleet) / best)
                rows.append((detector, device, fit_s, best, len(fleet) / best, len(flags[device])))
            figures[f"{detector}_anomalies"] = len(flags["cpu"])
            cuda = "cuda" in flags
            figures[f"{detector}_cuda_vs_cpu"] = (
                round(figures[f"{detector}_cuda_records_per_s"] / figures[f"{detector}_cpu_records_per_s"], 2)  # type: ignore[operator]
                if cuda
                else None
            )
            figures[f"{detector}_differing_flags"] = len(flags["cpu"] ^ flags["cuda"]) if cuda else None

    name = torch.cuda.get_device_name() if "cuda" in devices else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {name}")
    print(f"{len(fleet):,} readings x {args.channels} channels, {args.devices} devices, batches of {args.batch:,}")
    print(f"{'detector':<10}{'device':<8}{'fit s':>8}{'stream s':>10}{'records/s':>14}{'anomalies':>11}")
    for detector, device, fit_s, seconds, speed, count in rows:
        print(f"{detector:<10}{device:<8}{fit_s:>8.2f}{seconds:>10.3f}{speed:>14,.0f}{count:>11,}")
    print(json.dumps(figures | {"records": len(fleet), "batch": args.batch, "cuda": name}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
