"""`anomstream alert` against a real Prometheus Alertmanager: firing, refreshed, resolved; both restarted.

Alertmanager is built from its Go module (the module proxy serves it; ``go install`` stops at the web UI's
``embed`` of ``ui/app/dist``, so the module's source is copied and that folder given a placeholder page) into
``.stack/alertmanager-<version>/``, once per checkout, and started on a free loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from anomstream.alerting import ALERT_NAME, AlertSettings, Forwarder, alert_payload
from anomstream.config import PROJECT_ROOT, TopicSettings
from anomstream.incidents import CLOSED, OPEN, UPDATE, Incident
from anomstream.kafka_config import registry_client
from anomstream.serde import IncidentEncoder
from anomstream.tail import incident_row
from tests.conftest import Stack

VERSION = "v0.35.0"
MODULE = "github.com/prometheus/alertmanager"
CHANNELS = ("flow", "temperature")
CONFIG = """route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


def _incident(device: str, readings: int = 3) -> Incident:
    start = 1_764_547_200_000
    return Incident(f"{device}/7", device, start, start + 2000, readings, 2.5, start + 1000, 1.0, "pumps", 2,
                    (0.4, 2.6), 0, 7, 7 + readings, 100, 100 + readings)  # fmt: skip


def _row(device: str, state: str, readings: int = 3, muted_by: str = "") -> dict[str, Any]:
    return incident_row(_incident(device, readings).record(state, CHANNELS, "telemetry", 300_000, muted_by))


def test_an_incident_is_an_alert_that_fires_until_closed() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    firing = alert_payload(_row("pump-1", OPEN), now, 60.0)
    assert firing["labels"] == {"alertname": ALERT_NAME, "device": "pump-1", "model": "pumps",
                                "top_channel": "temperature", "incident_id": "pump-1/7"}  # fmt: skip
    assert firing["endsAt"] > now.isoformat() and firing["annotations"]["peak_score"] == "2.5"
    resolved = alert_payload(_row("pump-1", CLOSED), now, 60.0)
    assert resolved["endsAt"] == _row("pump-1", CLOSED)["end_time"]  # ended when the alarm did
    forwarder = Forwarder(AlertSettings())
    forwarder.take(_row("pump-1", OPEN), live=False)
    forwarder.take(_row("pump-2", OPEN), live=False)
    forwarder.take(_row("pump-2", CLOSED), live=False)  # closed before the service started: never fired
    assert set(forwarder.firing) == {"pump-1/7"} and not forwarder.changed
    forwarder.take(_row("pump-1", UPDATE, readings=5), live=True)
    forwarder.take(_row("pump-3", OPEN, muted_by="rule device=pump-3"), live=True)  # muted: not fired
    assert set(forwarder.changed) == {"pump-1/7"} and forwarder.firing["pump-1/7"]["readings"] == 5


# -- against a real Alertmanager ---------------------------------------------------------------------------


def _alertmanager_binary() -> Path:
    target = PROJECT_ROOT / ".stack" / f"alertmanager-{VERSION}" / "alertmanager"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to build Alertmanager for this test (the module proxy serves its source)")
    env = os.environ | {"GOFLAGS": "-mod=mod"}
    download = subprocess.run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], capture_output=True,
                              text=True, env=env, timeout=600, cwd=PROJECT_ROOT)  # fmt: skip
    if download.returncode != 0:
        pytest.fail(f"go mod download {MODULE}@{VERSION} failed: {download.stdout}{download.stderr}")
    source = Path(json.loads(download.stdout)["Dir"])
    build = target.parent / "src"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(source, build)
    for path in build.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    (build / "ui" / "app" / "dist").mkdir(parents=True, exist_ok=True)
    (build / "ui" / "app" / "dist" / "index.html").write_text("<html><body>alertmanager</body></html>\n")
    result = subprocess.run([go, "build", "-o", str(target), "./cmd/alertmanager"], cwd=build, env=env,
                            capture_output=True, text=True, timeout=1200)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"building Alertmanager failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(build, ignore_errors=True)
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Alertmanager:
    """A real Alertmanager on loopback, restartable."""

    def __init__(self, binary: Path, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port, self.cluster_port = _free_port(), _free_port()
        (folder / "alertmanager.yml").write_text(CONFIG)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "alertmanager.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen([
            str(self.binary), f"--config.file={self.folder / 'alertmanager.yml'}",
            f"--storage.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            f"--cluster.listen-address=127.0.0.1:{self.cluster_port}",
        ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: self._ready(), 60, "Alertmanager to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def active(self) -> dict[str, dict[str, Any]]:
        """Active alerts by incident id."""
        with urllib.request.urlopen(self.url + "/api/v2/alerts?active=true", timeout=5) as response:
            alerts = json.loads(response.read())
        return {a["labels"]["incident_id"]: a for a in alerts if a["status"]["state"] == "active"}


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    manager = Alertmanager(_alertmanager_binary(), tmp_path)
    manager.start()
    yield manager
    manager.stop()


def _alert_service(env: dict[str, str], manager: Alertmanager, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "anomstream", "alert", "--alertmanager-url", manager.url, "--resend", "1"]
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_alertmanager_shows_firing_and_resolved_alerts_across_restarts(
    stack: Stack, topics: TopicSettings, topic_env: dict[str, str], alertmanager: Alertmanager, tmp_path: Path
) -> None:
    kafka = stack.kafka_settings
    encoder = IncidentEncoder(registry_client(kafka), topics.incident_topic)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def write(*rows: tuple[str, str, int]) -> None:
        records = [_incident(d, n).record(state, CHANNELS, "telemetry", 300_000) for d, state, n in rows]
        for record, value in zip(records, encoder.encode(records), strict=True):
            producer.produce(topics.incident_topic, key=record["device_id"].encode(), value=value, partition=0)
        assert producer.flush(10) == 0

    # Before the service starts: one incident opened and closed (never to fire), one still open.
    write(("pump-1", OPEN, 3), ("pump-1", CLOSED, 3), ("pump-2", OPEN, 3))
    service = _alert_service(topic_env, alertmanager, tmp_path / "alert.log")
    try:
        wait_for(lambda: set(alertmanager.active()) == {"pump-2/7"}, 60, "pump-2's alert to fire")
        write(("pump-3", OPEN, 2), ("pump-2", UPDATE, 9))
        wait_for(lambda: set(alertmanager.active()) == {"pump-2/7", "pump-3/7"}, 30, "pump-3's alert")
        wait_for(lambda: alertmanager.active()["pump-2/7"]["annotations"]["readings"] == "9", 30, "the update")

        alertmanager.stop()  # Alertmanager keeps alerts in memory: the resends bring them back
        alertmanager.start()
        wait_for(lambda: set(alertmanager.active()) == {"pump-2/7", "pump-3/7"}, 30, "alerts after its restart")

        write(("pump-2", CLOSED, 9))
        wait_for(lambda: set(alertmanager.active()) == {"pump-3/7"}, 30, "pump-2's alert to resolve")
    finally:
        service.terminate()
        assert service.wait(30) == 0
    # The service restarts: it fires what is open (pump-3), never what closed (pump-1, pump-2).
    alertmanager.stop()
    alertmanager.start()
    service = _alert_service(topic_env, alertmanager, tmp_path / "alert.log")
    try:
        # caught up, it sends every open incident at once: had pump-1 or pump-2 been taken for open, they
        # would be there with pump-3
        wait_for(lambda: set(alertmanager.active()) == {"pump-3/7"}, 60, "pump-3 again, and only it")
        assert "pump-1/7" not in alertmanager.active() and "pump-2/7" not in alertmanager.active()
    finally:
        service.terminate()
        assert service.wait(30) == 0
