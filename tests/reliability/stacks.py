"""The clusters scenarios run on: the shared stack, or a private one whose servers a scenario may stop.

A private stack lives in its own folder on its own loopback ports and links the shared stack's installed
jars, exactly as ``tests/test_stack.py::private_stack`` does, so stopping its broker or registry never
disturbs the shared stack (or the colleagues using it). Stopping a server is a signal to the pid in
``<stack dir>/run/<name>.pid``; starting it again is ``anomstream stack up`` with the same environment,
which starts only what is missing.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from anomstream.config import KafkaSettings
from tests.conftest import PROJECT_ROOT, anomstream

SERVER_NAMES = ("kafka", "kafka-2", "kafka-3", "registry")


@dataclass
class Cluster:
    """A running stack as clients see it, and how to run `anomstream` commands against it.

    Attributes:
        bootstrap_servers: the brokers.
        registry_url: the Schema Registry's Confluent API URL.
        env: environment for `anomstream` subprocesses that talk to this stack.
        brokers: KRaft nodes.
        stack_dir: the private stack's folder; ``None`` for the shared stack, which is never stopped.
    """

    bootstrap_servers: str
    registry_url: str
    env: dict[str, str]
    brokers: int = 1
    stack_dir: Path | None = None

    @property
    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, schema_registry_url=self.registry_url)

    @property
    def replication_factor(self) -> int:
        return min(self.brokers, 3)

    def pid(self, name: str) -> int | None:
        """The pid of server ``name`` (``kafka``, ``kafka-2``, ``kafka-3``, ``registry``) if it runs."""
        assert self.stack_dir is not None, "the shared stack's servers are not ours to look after"
        try:
            pid = int((self.stack_dir / "run" / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop_server(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60.0) -> float:
        """Signal server ``name`` and wait until its process is gone; return how long that took."""
        assert self.stack_dir is not None, "never stop the shared stack"
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running in {self.stack_dir}"
        started = time.monotonic()
        os.kill(pid, sig)
        deadline = started + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):  # a graceful stop that hangs must not hang the suite
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        return time.monotonic() - started

    def start_missing(self, timeout_s: float = 300.0) -> None:
        """``anomstream stack up``: starts only the servers that are not running, waits until they answer."""
        assert self.stack_dir is not None
        up = anomstream("stack", "up", env=self.env, timeout=timeout_s)
        assert up.returncode == 0, f"restarting servers of {self.stack_dir} failed:\n{up.stdout}\n{up.stderr}"

    def down(self) -> None:
        """``anomstream stack down`` for a private stack (never the shared one), and any server it lost track
        of (started, but its pid file gone): each carries this stack's folder in its command line."""
        if self.stack_dir is None:
            return
        anomstream("stack", "down", env=self.env, timeout=180)
        marker = f"-Danomstream.stack={self.stack_dir}:"
        for process in psutil.process_iter(["pid", "cmdline"]):
            if any(arg.startswith(marker) for arg in process.info["cmdline"] or []):
                process.kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_run(count: int, taken: set[int]) -> int:
    """A port ``p`` such that ``p, p + 2, ..., p + 2 (count - 1)`` are all free (KRaft nodes are two apart)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        ports = {base + 2 * i for i in range(count)}
        if max(ports) < 65_000 and not ports & taken and all(_port_free(p) for p in ports):
            taken |= ports
            return base
    raise AssertionError(f"no run of {count} free loopback ports found")


def start_private_cluster(folder: Path, brokers: int = 1) -> Cluster:
    """Start a private stack of ``brokers`` KRaft nodes and a registry in ``folder`` (see the module docstring)."""
    shared_dir = Path(os.environ.get("ANOMSTREAM_STACK_DIR", PROJECT_ROOT / ".stack"))
    (folder / "kafka").mkdir(parents=True)
    (folder / "kafka" / "libs").symlink_to(shared_dir / "kafka" / "libs")
    (folder / "registry").symlink_to(shared_dir / "registry")
    for stamp in shared_dir.glob(".installed-*"):
        (folder / stamp.name).touch()
    taken: set[int] = set()
    env = os.environ | {
        "ANOMSTREAM_STACK_DIR": str(folder),
        "ANOMSTREAM_STACK_ENGINE": "jvm",
        "ANOMSTREAM_BROKERS": str(brokers),
        "ANOMSTREAM_KAFKA_PORT": str(_free_port_run(brokers, taken)),
        "ANOMSTREAM_CONTROLLER_PORT": str(_free_port_run(brokers, taken)),
        "ANOMSTREAM_REGISTRY_PORT": str(_free_port_run(1, taken)),
        "ANOMSTREAM_REGISTRY_MANAGEMENT_PORT": str(_free_port_run(1, taken)),
        # smaller heaps than the shared stack's: these brokers hold one scenario's topics
        "ANOMSTREAM_KAFKA_HEAP": "512m",
        "ANOMSTREAM_STACK_TIMEOUT": "240",
    }
    up = anomstream("stack", "up", env=env, timeout=600)
    if up.returncode != 0:
        anomstream("stack", "down", env=env, timeout=180)
        raise AssertionError(f"private stack in {folder} did not start:\n{up.stdout}\n{up.stderr}")
    exports = dict(re.findall(r"export (\w+)=(\S+)", anomstream("stack", "env", env=env).stdout))
    env |= exports
    return Cluster(exports["KAFKA_BOOTSTRAP_SERVERS"], exports["SCHEMA_REGISTRY_URL"], env, brokers, folder)
