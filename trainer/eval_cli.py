"""``anomstream eval skab``: the SKAB benchmark protocol over a folder of SKAB CSV files.

Prints a table of point-wise metrics (F1, false and missed alarm rates, confusion counts); with ``--json``
one JSON object on the last line instead (keys ``f1``, ``far``, ``mar``, ``tp``, ``fp``, ``fn``, ``tn``,
``files``, ...), for scripts and CI.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from anomstream.detectors import DETECTOR_NAMES

console = Console(stderr=True)


def _env_help(text: str, name: str, default: object) -> str:
    return f"{text} [env: {name}, default: {default}]"


def add_parser(subparsers: Any) -> None:
    """Register ``eval`` and its ``skab`` action."""
    parser = subparsers.add_parser("eval", help="evaluate detectors offline on labelled benchmark data")
    actions = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    skab = actions.add_parser(
        "skab",
        help="SKAB protocol: per file, train on the first 400 readings, score the rest, sum the counts",
        description=__doc__,
    )
    data_default = os.environ.get("ANOMSTREAM_SKAB_DATA", "../shared/data/skab/data")
    skab.add_argument(
        "--data",
        default=data_default,
        help=_env_help("SKAB data folder (searched recursively)", "ANOMSTREAM_SKAB_DATA", data_default),
    )
    model_default = os.environ.get("ANOMSTREAM_MODEL", "iforest")
    skab.add_argument(
        "--model",
        default=model_default,
        choices=DETECTOR_NAMES,
        help=_env_help("detector", "ANOMSTREAM_MODEL", model_default),
    )
    seed_default = int(os.environ.get("ANOMSTREAM_SEED", "0"))
    seed_help = _env_help("model seed", "ANOMSTREAM_SEED", seed_default)
    skab.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    skab.add_argument(
        "--train-rows",
        type=int,
        default=400,
        help="leading readings of each file used for training (SKAB's protocol: 400)",
    )
    skab.add_argument("--report", default=None, help="folder for report.json and report.png (default: none)")
    skab.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    skab.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the protocol and print the figures; 0 on success."""
    from anomstream.skab_eval import evaluate_skab

    with console.status(f"SKAB with {args.model}..."):
        outcome = evaluate_skab(
            args.data, args.model, seed=args.seed, train_rows=args.train_rows, report_dir=args.report
        )
    summary = outcome.to_dict()
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"SKAB ({summary['files']} files, seed {args.seed}), test readings only")
    for column in ("file", "F1", "FAR %", "MAR %", "TP", "FP", "FN", "TN"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for row in summary["per_file"]:
        table.add_row(row["device_id"], *_figures(row))
    table.add_section()
    table.add_row(f"total ({args.model})", *_figures(summary), style="bold")
    Console().print(table)
    if summary["roc_auc"] is not None:
        auc = f"ROC-AUC {summary['roc_auc']:.3f}, PR-AUC {summary['pr_auc']:.3f}"
        Console().print(f"{auc} (ranking by score / threshold)")
    return 0


def _figures(row: dict[str, Any]) -> list[str]:
    return [
        f"{row['f1']:.3f}",
        f"{row['far']:.2f}",
        f"{row['mar']:.2f}",
        *(str(row[k]) for k in ("tp", "fp", "fn", "tn")),
    ]
