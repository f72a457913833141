"""`anomstream models`: look at the model store and choose which version scorers serve.

- ``list``: every model and version, the current one marked, with its detector and evaluation figures.
- ``show NAME [--version V]``: a version's manifest (the current version by default).
- ``promote NAME VERSION``: make a stored version current (its files are verified first), and announce it.
- ``rollback NAME``: make the previously current version current again, and announce it.

Scorers follow announcements on the ``models`` topic and also look at the store every few seconds, so a
failed announcement only delays the switch; it is logged and the command still succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from anomstream.config import (
    KafkaSettings,
    ModelStoreSettings,
    TopicSettings,
    add_settings_arguments,
    settings_from_args,
)
from anomstream.errors import AnomstreamError, ModelError
from anomstream.model_store import ModelStore, announce

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and its sub-commands."""
    parser = subparsers.add_parser(
        "models",
        help="list, show, promote and roll back models in the model store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every model and version, the current ones marked")
    listing.add_argument("--json", action="store_true", help="one JSON object per version instead of a table")
    show = actions.add_parser("show", help="a version's manifest (the current version by default)")
    show.add_argument("name", help="model name")
    show.add_argument("--version", type=int, default=None, help="version (default: the current one)")
    promote = actions.add_parser("promote", help="make a stored version current and announce it")
    promote.add_argument("name", help="model name")
    promote.add_argument("version", type=int, help="version to serve")
    rollback = actions.add_parser("rollback", help="make the previously current version current again")
    rollback.add_argument("name", help="model name")
    for action in (listing, show, promote, rollback):
        add_settings_arguments(action, ModelStoreSettings)
    for action in (promote, rollback):
        add_settings_arguments(action, TopicSettings)
        add_settings_arguments(action, KafkaSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit status."""
    store_settings = settings_from_args(ModelStoreSettings, args)
    store = ModelStore(store_settings.model_dir, store_settings.store_key())
    # piped output is not cut to 80 columns: the table stays readable in logs and CI
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.models_action == "list":
        return _list(store, console, as_json=args.json)
    if args.models_action == "show":
        version = args.version if args.version is not None else _default_version(store, args.name)
        console.print_json(json.dumps(store.manifest(args.name, version)))
        return 0
    if args.models_action == "promote":
        store.promote(args.name, args.version)
        version = args.version
    else:
        version = store.rollback(args.name)
    console.print(f"{args.name}: version {version} is current")
    _announce(args, store, args.name, version)
    return 0


def _list(store: ModelStore, console: Console, as_json: bool) -> int:
    rows = [_row(store, name, version) for name in store.names() for version in store.versions(name)]
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    if not rows:
        console.print(f"no models in {store.root}")
        return 0
    table = Table(title=f"models in {store.root}")
    for column in ("name", "version", "current", "detector", "per device", "created", "trained on", "F1", "FAR %"):
        table.add_column(column, justify="right" if column in ("version", "F1", "FAR %", "trained on") else "left")
    for row in rows:
        table.add_row(
            row["name"],
            str(row["version"]),
            "*" if row["current"] else "",
            str(row["detector"]),
            "yes" if row["per_device"] else "no",
            str(row["created_at"])[:16].replace("T", " "),
            f"{row['training_records']:,}" if row["training_records"] is not None else "",
            f"{row['f1']:.3f}" if row["f1"] is not None else "",
            f"{row['far']:.2f}" if row["far"] is not None else "",
        )
    console.print(table)
    return 0


def _row(store: ModelStore, name: str, version: int) -> dict[str, Any]:
    """One version's summary; an unreadable manifest shows as such instead of failing the whole list."""
    try:
        manifest = store.manifest(name, version)
    except AnomstreamError as exc:
        log.warning("%s version %d: %s", name, version, exc)
        manifest = {}
    metrics = (manifest.get("evaluation") or {}).get("metrics") or {}
    training = ((manifest.get("training") or {}).get("window") or {}).get("records")
    return {
        "name": name,
        "version": version,
        "current": store.current_version(name) == version,
        "detector": manifest.get("detector", "?"),
        "per_device": manifest.get("per_device"),
        "created_at": manifest.get("created_at", "?"),
        "training_records": training,
        "f1": metrics.get("f1"),
        "far": metrics.get("far"),
    }


def _default_version(store: ModelStore, name: str) -> int:
    current = store.current_version(name)
    if current is not None:
        return current
    versions = store.versions(name)
    if not versions:
        raise ModelError(f"no model {name!r} in {store.root}; `anomstream models list` shows what there is")
    return versions[-1]


def _announce(args: argparse.Namespace, store: ModelStore, name: str, version: int) -> None:
    kafka = settings_from_args(KafkaSettings, args)
    topics = settings_from_args(TopicSettings, args)
    try:
        announce(kafka, topics.models_topic, name, version, store.manifest(name, version), current_version=version)
    except AnomstreamError as exc:
        log.warning("not announced on %s (%s): scorers switch when they next check the store", topics.models_topic, exc)
