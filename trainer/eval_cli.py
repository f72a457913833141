"""``anomstream eval skab`` and ``anomstream eval nab``: benchmark protocols over folders of labelled CSV files.

``skab`` prints a table of point-wise metrics (F1, false and missed alarm rates, confusion counts); with
``--json`` one JSON object on the last line instead (keys ``f1``, ``far``, ``mar``, ``tp``, ``fp``, ``fn``,
``tn``, ``files``, ...), for scripts and CI.

``nab`` prints per file the detected windows, false alarms and raw NAB score, and the three normalised NAB
scores; with ``--json`` one JSON object on the last line (keys ``standard``, ``reward_low_FP_rate``,
``reward_low_FN_rate``, ``windows``, ``detected``, ``fp``, ``files``, ``per_file``, ...).
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


def _add_data_argument(parser: Any, text: str, variable: str, shared_folder: str) -> None:
    """``--data``, defaulting from ``variable``, else the folder under ``../shared/data``."""
    default = os.environ.get(variable, f"../shared/data/{shared_folder}")
    parser.add_argument("--data", default=default, help=_env_help(text, variable, default))


def _add_model_arguments(parser: Any) -> None:
    """``--model`` and ``--seed``, shared by every benchmark."""
    model_default = os.environ.get("ANOMSTREAM_MODEL", "iforest")
    parser.add_argument(
        "--model",
        default=model_default,
        choices=DETECTOR_NAMES,
        help=_env_help("detector", "ANOMSTREAM_MODEL", model_default),
    )
    seed_default = int(os.environ.get("ANOMSTREAM_SEED", "0"))
    parser.add_argument(
        "--seed", type=int, default=seed_default, help=_env_help("model seed", "ANOMSTREAM_SEED", seed_default)
    )


def add_parser(subparsers: Any) -> None:
    """Register ``eval`` and its ``skab`` and ``nab`` actions."""
    parser = subparsers.add_parser("eval", help="evaluate detectors offline on labelled benchmark data")
    actions = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    skab = actions.add_parser(
        "skab",
        help="SKAB protocol: per file, train on the first 400 readings, score the rest, sum the counts",
        description=__doc__,
    )
    _add_data_argument(skab, "SKAB data folder (searched recursively)", "ANOMSTREAM_SKAB_DATA", "skab/data")
    _add_model_arguments(skab)
    skab.add_argument(
        "--train-rows",
        type=int,
        default=400,
        help="leading readings of each file used for training (SKAB's protocol: 400)",
    )
    skab.add_argument("--report", default=None, help="folder for report.json and report.png (default: none)")
    skab.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    skab.set_defaults(func=run)
    _add_nab_parser(actions)


def _add_nab_parser(actions: Any) -> None:
    """Register ``eval nab``."""
    nab = actions.add_parser(
        "nab",
        help="NAB protocol: per file, train on the probation rows (15 %%), score alarm starts with NAB's profiles",
        description=__doc__,
    )
    nab_help = "NAB data folder or category folder (labels from <root>/labels/combined_windows.json)"
    _add_data_argument(nab, nab_help, "ANOMSTREAM_NAB_DATA", "nab/data")
    _add_model_arguments(nab)
    nab.add_argument(
        "--results-dir",
        default=None,
        help="write detections in NAB's results layout, <DIR>/<category>/<file>.csv (default: none)",
    )
    nab.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    nab.set_defaults(func=run_nab)


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


def run_nab(args: argparse.Namespace) -> int:
    """Run the NAB protocol and print the figures; 0 on success."""
    from anomstream.nab_eval import evaluate_nab

    with console.status(f"NAB with {args.model}..."):
        outcome = evaluate_nab(args.data, args.model, seed=args.seed, results_dir=args.results_dir)
    summary = outcome.to_dict()
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"NAB ({summary['files']} files, {args.model}, seed {args.seed}), after probation")
    table.add_column("file", overflow="fold")  # fold, not truncate: NAB's file names tell the series apart
    for column in ("detected / windows", "FP", "raw score"):
        table.add_column(column, justify="right")
    for row in summary["per_file"]:
        detected = f"{row['detected']} / {row['windows']}"
        table.add_row(row["file"], detected, str(row["fp"]), f"{row['raw_standard']:.3f}")
    table.add_section()
    table.add_row("total", f"{summary['detected']} / {summary['windows']}", str(summary["fp"]), "", style="bold")
    Console().print(table)
    profiles = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    scores = ", ".join(f"{name} {summary[name]:.1f}" for name in profiles)
    Console().print(f"NAB normalised scores (100 perfect, 0 null detector): {scores}")
    return 0
