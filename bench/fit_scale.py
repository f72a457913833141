"""Training at scale: fit time and peak memory of every detector on 1,000,000 synthetic rows.

A synthetic fleet (``anomstream.synthetic``: ``--devices`` 100 devices x 10,000 readings, ``--channels`` 8,
seed 1) is fitted with ``AnomalyModel.fit(batch, detector, per_device=False, seed=0)``, the trainer's own
path (features, detector, calibration of the threshold), once per detector, each in a fresh subprocess so
that the peak RSS is that detector's alone. The child generates the fleet and imports the detector's
libraries (scikit-learn, torch) before the clock starts, then times the fit; it reports its own high-water
mark (``ru_maxrss`` of ``RUSAGE_SELF``: ``RUSAGE_CHILDREN`` in the parent would be the largest child so far,
not this one) and the high-water mark before the fit, which is the fleet plus the imports. The
autoencoders train for at most ``--max-epochs`` epochs (default 1: the epoch count scales the time, not the
memory) on ``device="auto"``; a child that runs past ``--budget-s`` is killed and reported as such.

The fit time includes everything ``AnomalyModel.fit`` does, which with the default out-of-fold
calibration (``calibration_folds=5``) is six detector fits and five scorings of every row. On 2 shared CPU
cores at 1,000,000 rows: iforest about 75 s and 0.9 GB peak, pca 10 s and 1.1 GB, dense-ae 58 s and
1.4 GB, conv-ae (``W=32``) 5 min and 1.8 GB (13 min with ``--max-epochs 3``, same memory); the
autoencoders train on at most ``max_train_rows`` (200,000) sampled rows per fit.

Prints a table, then one JSON object on the last line:
``{"rows": 1000000, "iforest": {"fit_s": ..., "peak_rss_mb": ..., ...}, "pca": {...}, ...}``; a detector
that failed has ``"error"`` instead of figures. ``--rows`` runs it smaller, ``--detectors`` on a subset.
Needs no Kafka.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

DETECTORS = ("iforest", "pca", "dense-ae", "conv-ae")
AUTOENCODERS = ("dense-ae", "conv-ae")
console = Console(stderr=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (default 1,000,000)")
    parser.add_argument("--devices", type=int, default=100, help="synthetic devices (default 100)")
    parser.add_argument("--channels", type=int, default=8, help="channels per reading (default 8)")
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS),
                        help="detectors to fit (default all)")  # fmt: skip
    parser.add_argument("--max-epochs", type=int, default=1, help="autoencoder epochs at most (default 1)")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="kill a detector's fit after (default 1800)")
    parser.add_argument("--child", choices=DETECTORS, help=argparse.SUPPRESS)  # internal: one fit, JSON out
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_fit_one(args.child, args)), flush=True)
        return 0
    figures: dict[str, dict[str, Any]] = {}
    for detector in args.detectors:
        console.log(f"fitting {detector} on {args.rows:,} rows in a fresh process")
        figures[detector] = _run_child(detector, args)
        console.log(figures[detector])
    _report(figures, args)
    print(json.dumps({"rows": args.rows, **figures}), flush=True)
    return 0 if all("error" not in f for f in figures.values()) else 1


def _run_child(detector: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit ``detector`` in a subprocess; its figures, or ``{"error": ...}`` when it failed or overran."""
    command = [
        sys.executable, __file__, "--child", detector, "--rows", str(args.rows), "--devices", str(args.devices),
        "--channels", str(args.channels), "--max-epochs", str(args.max_epochs),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.budget_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over the {args.budget_s:.0f} s budget"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        # A negative code is a signal: -9 is usually the kernel's OOM killer.
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _fit_one(detector: str, args: argparse.Namespace) -> dict[str, Any]:
    """In the child: generate the fleet, fit one model, report time and memory."""
    from anomstream.detectors import detector_class
    from anomstream.model import AnomalyModel
    from anomstream.synthetic import FleetSpec, generate_fleet

    detector_class(detector)  # scikit-learn or torch imported now: a once-per-process cost, not the fit's
    batch = generate_fleet(FleetSpec(devices=args.devices, records=args.rows, channels=args.channels, seed=1))
    params = {"max_epochs": args.max_epochs} if detector in AUTOENCODERS else {}
    before_mb = _peak_rss_mb()
    started = time.perf_counter()
    model = AnomalyModel.fit(batch, detector, per_device=False, seed=0, params=params)
    fit_s = time.perf_counter() - started
    return {
        "fit_s": round(fit_s, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_fit_mb": round(before_mb, 1),
        "features": model.pipeline.n_features,
        "params": params,
    }


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(figures: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    table = Table(
        title=f"AnomalyModel.fit on {args.rows:,} rows ({args.devices} devices x {args.channels} channels), "
        "one process per detector"
    )
    for column in ("detector", "rows", "fit s", "peak RSS MB", "before fit MB", "notes"):
        table.add_column(column, justify="left" if column in ("detector", "notes") else "right")
    for detector, f in figures.items():
        if "error" in f:
            table.add_row(detector, f"{args.rows:,}", "-", "-", "-", f["error"])
            continue
        notes = f"{f['features']} features" + (f", max_epochs={f['params']['max_epochs']}" if f["params"] else "")
        table.add_row(detector, f"{args.rows:,}", f"{f['fit_s']:.2f}", f"{f['peak_rss_mb']:,.0f}",
                      f"{f['rss_before_fit_mb']:,.0f}", notes)  # fmt: skip
    out = Console()
    (out if out.is_terminal else Console(width=120)).print(table)


if __name__ == "__main__":
    sys.exit(main())
