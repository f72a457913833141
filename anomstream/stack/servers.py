"""The stack's two server processes: how each is configured, started, checked and stopped.

A process is ours when its command line carries ``-Danomstream.stack=<state folder>:<name>``; pid files
are only a hint, so a stale pid file (the process died, or the pid was reused) is detected and replaced.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anomstream.errors import StackError
from anomstream.stack.install import kafka_libs, registry_home
from anomstream.stack.settings import StackSettings

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
"""


@dataclass(frozen=True)
class Server:
    """One server process of the stack."""

    name: str
    command: list[str]
    cwd: Path
    log_file: Path
    address: str
    port: int
    ready: Callable[[], bool]
    settings: StackSettings
    other_ports: tuple[int, ...] = ()  # also bound by the process (controller, management)

    @property
    def marker(self) -> str:
        return f"-Danomstream.stack={self.settings.stack_dir}:{self.name}"

    @property
    def pid_file(self) -> Path:
        return self.settings.stack_dir / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _cmdline(pid) is not None and self.marker in (_cmdline(pid) or ""):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self) -> int:
        """Start the process in its own session, logging to ``log_file``; return its pid."""
        for port in (self.port, *self.other_ports):
            if _port_open(port):
                raise StackError(
                    f"port {port} on 127.0.0.1 is taken by another process, so {self.name} cannot start: "
                    f"stop that process or choose another port (see `anomstream stack up --help`)"
                )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server answers (not merely until its port opens)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(f"{self.name} exited while starting; last lines of {self.log_file}:\n{self.tail(15)}")
            if self.ready():
                return
            time.sleep(0.25)
        raise StackError(f"{self.name} did not answer within {timeout_s:.0f} s; see {self.log_file}:\n{self.tail(15)}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; True if a process was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _cmdline(pid) is not None:
            time.sleep(0.2)
        if _cmdline(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            while _cmdline(pid) is not None:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"


def _cmdline(pid: int) -> str | None:
    """The process's command line, or None when it no longer runs (zombies count as gone).

    A starting JVM reads for a moment with an empty command line (the java launcher executes itself again):
    that is waited out, up to two seconds, rather than taken for a stale pid file, which would remove the
    pid file of a server just started and report it dead while it runs on, orphaned.
    """
    deadline = time.monotonic() + 2.0
    while True:
        try:
            status = Path(f"/proc/{pid}/stat").read_text()
            if status.rsplit(")", 1)[1].split()[0] == "Z":
                return None
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        if raw or time.monotonic() > deadline:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _node_name(node: int) -> str:
    return "kafka" if node == 1 else f"kafka-{node}"


def kafka_servers(settings: StackSettings) -> list[Server]:
    """The KRaft nodes (broker and controller in one process each), configured from ``settings``."""
    return [kafka_server(settings, node) for node in range(1, settings.brokers + 1)]


def kafka_server(settings: StackSettings, node: int = 1) -> Server:
    """KRaft node ``node`` (1-based): its command line, log and readiness check."""
    name = _node_name(node)
    home = settings.stack_dir / name
    config = home / "config"
    address = f"127.0.0.1:{settings.broker_port(node)}"
    return Server(
        name=name,
        command=[
            settings.java,
            f"-Xmx{settings.kafka_heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            f"-Danomstream.stack={settings.stack_dir}:{name}",
            f"-Dlog4j2.configurationFile={config / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={home / 'logs'}",
            "-cp",
            f"{kafka_libs(settings)}/*",
            "kafka.Kafka",
            str(config / "server.properties"),
        ],
        cwd=home,
        log_file=settings.stack_dir / "logs" / f"{name}.out",
        address=address,
        port=settings.broker_port(node),
        ready=lambda: kafka_answers(address),
        settings=settings,
        other_ports=(settings.controller_port_of(node),),
    )


def kafka_answers(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """True when a broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    # "connection refused" is the expected answer while the broker starts: keep librdkafka quiet about it
    quiet = logging.getLogger("anomstream.stack.probe")
    quiet.setLevel(logging.CRITICAL)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers, "logger": quiet})  # type: ignore[dict-item]
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return bool(metadata.brokers)


def _server_properties(settings: StackSettings, node: int, data: Path) -> str:
    n, rf = settings.brokers, settings.replication_factor
    min_isr = 2 if rf >= 3 else 1
    voters = ",".join(f"{i}@127.0.0.1:{settings.controller_port_of(i)}" for i in range(1, n + 1))
    port, controller = settings.broker_port(node), settings.controller_port_of(node)
    lines = [
        "process.roles=broker,controller",
        f"node.id={node}",
        f"controller.quorum.voters={voters}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=1",
        f"default.replication.factor={rf}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={rf}",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={rf}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # a single-member group need not wait for others before its first assignment
        "group.initial.rebalance.delay.ms=0",
    ]
    return "\n".join(lines) + "\n"


def prepare_kafka(settings: StackSettings) -> None:
    """Write each node's configuration and format its storage once (data survives down/up)."""
    marker = settings.stack_dir / "cluster.json"
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded["brokers"] != settings.brokers:
            raise StackError(
                f"{settings.stack_dir} holds a {recorded['brokers']}-node cluster, not {settings.brokers}: use another "
                "ANOMSTREAM_STACK_DIR for a different cluster size (or remove the folder to start afresh)"
            )
        cluster_id = recorded["cluster_id"]
    else:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        settings.stack_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"brokers": settings.brokers, "cluster_id": cluster_id}))
    for node in range(1, settings.brokers + 1):
        home = settings.stack_dir / _node_name(node)
        config, data = home / "config", home / "data"
        config.mkdir(parents=True, exist_ok=True)
        (home / "logs").mkdir(parents=True, exist_ok=True)
        (config / "log4j2.properties").write_text(LOG4J2)
        (config / "server.properties").write_text(_server_properties(settings, node, data))
        if not (data / "meta.properties").exists():
            _format_storage(settings, home, cluster_id)


def _format_storage(settings: StackSettings, home: Path, cluster_id: str) -> None:
    config = home / "config"
    result = subprocess.run(
        [
            settings.java,
            f"-Dlog4j2.configurationFile={config / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={home / 'logs'}",
            "-cp",
            f"{kafka_libs(settings)}/*",
            "kafka.tools.StorageTool",
            "format",
            # joined with "=": a base64 id may start with "-" and would read as an option
            f"--cluster-id={cluster_id}",
            "-c",
            str(config / "server.properties"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-1500:]
        raise StackError(f"formatting Kafka's storage in {home} failed: {output}")


def registry_server(settings: StackSettings, java: str) -> Server:
    """Apicurio Registry with kafkasql storage, its Confluent-compatible API at ``/apis/ccompat/v7``."""
    home = registry_home(settings)
    return Server(
        name="registry",
        command=[
            java,
            f"-Xmx{settings.registry_heap}",
            # the registry is a short-lived dev server: fast start matters more than peak throughput
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Danomstream.stack={settings.stack_dir}:registry",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={settings.registry_port}",
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={settings.registry_management_port}",
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={settings.bootstrap_servers}",
            # Confluent's default: a new version must be able to read data written with the previous one
            "-Dapicurio.rules.global.compatibility=BACKWARD",
            "-jar",
            str(home / "quarkus-run.jar"),
        ],
        cwd=home,
        log_file=settings.stack_dir / "logs" / "registry.log",
        address=settings.registry_url,
        port=settings.registry_port,
        ready=lambda: registry_answers(settings.registry_url),
        settings=settings,
        other_ports=(settings.registry_management_port,),
    )


def registry_answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when the registry's Confluent API lists subjects."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def java_major(java: str) -> int | None:
    """The major version of a ``java`` executable, or None if it does not run."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_registry_java(settings: StackSettings) -> str:
    """A Java 21+ for Apicurio Registry 3.x: the configured one, else JAVA_HOME, PATH, /usr/lib/jvm."""
    if settings.registry_java:
        if (java_major(settings.registry_java) or 0) < 21:
            raise StackError(f"ANOMSTREAM_REGISTRY_JAVA={settings.registry_java} is not a Java 21 or newer")
        return settings.registry_java
    candidates = [settings.java, "java"]
    if os.environ.get("JAVA_HOME"):
        candidates.insert(0, str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    candidates += sorted(str(p) for p in Path("/opt/java").glob("*/bin/java"))
    found = {c: java_major(c) for c in dict.fromkeys(candidates)}
    usable = sorted(((v, c) for c, v in found.items() if v and v >= 21), reverse=True)
    if usable:
        return usable[0][1]
    seen = ", ".join(f"{c} ({v})" for c, v in found.items() if v) or "none"
    raise StackError(
        f"Apicurio Registry 3.x needs Java 21 or newer; Java found: {seen}. Install a JDK 21+ "
        "and set ANOMSTREAM_REGISTRY_JAVA to its bin/java"
    )
