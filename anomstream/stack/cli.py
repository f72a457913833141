"""``anomstream stack up | down | status | env | logs``: the local Kafka broker and Schema Registry."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from anomstream.config import KafkaSettings, TopicSettings, add_settings_arguments, settings_from_args
from anomstream.errors import StackError
from anomstream.stack.engine import add_engine_argument, dispatch
from anomstream.stack.install import install
from anomstream.stack.servers import (
    Server,
    find_registry_java,
    java_major,
    kafka_servers,
    prepare_kafka,
    registry_server,
)
from anomstream.stack.settings import StackSettings

console = Console(stderr=True)


def add_parser(subparsers: Any) -> None:
    """Register ``stack`` and its actions."""
    parser = subparsers.add_parser("stack", help="install, start and stop the local Kafka broker and Schema Registry")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="install what is missing, start both servers, create the topics (idempotent)")
    add_settings_arguments(up, StackSettings)
    add_settings_arguments(up, TopicSettings)
    add_engine_argument(up)
    up.set_defaults(func=run_up)
    for name, func, help_text in (
        ("down", run_down, "stop exactly the processes `up` started (gracefully first)"),
        ("status", run_status, "show what runs where"),
        ("env", run_env, "print export lines for KAFKA_BOOTSTRAP_SERVERS and SCHEMA_REGISTRY_URL"),
    ):
        action = actions.add_parser(name, help=help_text)
        add_settings_arguments(action, StackSettings)
        add_engine_argument(action)
        action.set_defaults(func=func)
    logs = actions.add_parser("logs", help="show the servers' log files")
    logs.add_argument("server", nargs="?", help="one server: kafka, kafka-2, ..., registry (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines from the end of each log (default: 40)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (tail -f)")
    add_settings_arguments(logs, StackSettings)
    logs.set_defaults(func=run_logs)


def _servers(settings: StackSettings, registry_java: str = "java") -> list[Server]:
    return [*kafka_servers(settings), registry_server(settings, registry_java)]


def run_up(args: argparse.Namespace) -> int:
    """Install, start, wait until both servers answer, create the topics."""
    settings = settings_from_args(StackSettings, args)
    if (docker_status := dispatch("up", args, settings)) is not None:
        return docker_status
    started = time.monotonic()
    servers = _servers(settings)
    registry_java = "java"
    if any(server.pid() is None for server in servers):
        _check_tools(settings)
        install(settings, console)
        registry_java = find_registry_java(settings)
    *brokers, registry = _servers(settings, registry_java)
    # Start everything at once: KRaft nodes need a quorum before any answers, and the registry spends its
    # first seconds booting Quarkus, by which time the brokers answer; if it gave up on them all the same,
    # it is started again once they are ready.
    to_start = [server for server in (*brokers, registry) if server.pid() is None]
    with console.status(f"starting {', '.join(s.name for s in to_start) or 'nothing'}..."):
        if any(server in to_start for server in brokers):
            prepare_kafka(settings)
        for server in to_start:
            server.start()
        for broker in brokers:
            broker.wait_ready(settings.start_timeout_s)
        try:
            registry.wait_ready(settings.start_timeout_s)
        except StackError:
            if registry not in to_start or registry.pid() is not None:
                raise
            registry.start()
            registry.wait_ready(settings.start_timeout_s)
    for server in to_start:
        console.print(f"[green]started[/] {server.name} on {server.address}")
    from anomstream.topics import ensure_topics, system_topics

    kafka_settings = KafkaSettings(bootstrap_servers=settings.bootstrap_servers)
    ensure_topics(
        kafka_settings, system_topics(settings_from_args(TopicSettings, args), settings.replication_factor)
    )
    console.print(
        f"stack up in {time.monotonic() - started:.1f} s: Kafka {settings.bootstrap_servers}, "
        f"registry {settings.registry_url}"
    )
    return 0


def _check_tools(settings: StackSettings) -> None:
    if shutil.which(settings.java) is None:
        raise StackError(f"Java ({settings.java}) is not installed: Kafka 4 needs Java 17+ (e.g. openjdk-17-jdk)")
    major = java_major(settings.java) or 0
    if major < 17:
        raise StackError(f"{settings.java} is Java {major}; Kafka 4 needs Java 17 or newer (set ANOMSTREAM_JAVA)")


def run_down(args: argparse.Namespace) -> int:
    """Stop the registry, then the broker."""
    settings = settings_from_args(StackSettings, args)
    if (docker_status := dispatch("down", args, settings)) is not None:
        return docker_status
    for server in reversed(_servers(settings)):
        if server.stop():
            console.print(f"stopped {server.name}")
        else:
            console.print(f"{server.name} was not running")
    return 0


def run_status(args: argparse.Namespace) -> int:
    """A table of the servers: pid, state, address, log; exit 0 only when both run."""
    settings = settings_from_args(StackSettings, args)
    if (docker_status := dispatch("status", args, settings)) is not None:
        return docker_status
    table = Table(title=f"anomstream stack ({settings.stack_dir})")
    for column in ("server", "pid", "state", "address", "log"):
        table.add_column(column)
    running = 0
    for server in _servers(settings):
        pid = server.pid()
        state = "not running" if pid is None else ("answering" if server.ready() else "starting / not answering")
        running += state == "answering"
        table.add_row(server.name, str(pid or "-"), state, server.address, str(server.log_file))
    Console().print(table)
    return 0 if running == settings.brokers + 1 else 3


def run_env(args: argparse.Namespace) -> int:
    """Export lines for the running stack (eval them in a shell)."""
    settings = settings_from_args(StackSettings, args)
    if (docker_status := dispatch("env", args, settings)) is not None:
        return docker_status
    if any(server.pid() is None for server in _servers(settings)):
        console.print("[yellow]warning:[/] the stack is not running; start it with `anomstream stack up`")
    print(f"export KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}")
    print(f"export SCHEMA_REGISTRY_URL={settings.registry_url}")
    return 0


def run_logs(args: argparse.Namespace) -> int:
    """Print (or follow) the servers' logs."""
    settings = settings_from_args(StackSettings, args)
    servers = [s for s in _servers(settings) if args.server in (None, s.name)]
    files = [str(s.log_file) for s in servers if s.log_file.exists()]
    if not files:
        raise StackError(f"no logs yet under {settings.stack_dir / 'logs'}: run `anomstream stack up` first")
    command = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + files
    return subprocess.call(command)
