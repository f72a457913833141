"""The scorer's Prometheus metrics and its small HTTP server: ``/metrics``, ``/healthz``, ``/readyz``.

Metrics live in their own registry (not the process-global one), so tests can run several scorers in a
process and read exact counts. The server binds ``127.0.0.1`` unless configured otherwise (``0.0.0.0`` in
Docker); port 0 picks a free port, which is logged.

``/healthz`` answers 200 while the scoring loop is alive (it ticked within ``stall_after_s``) and 503
otherwise; ``/readyz`` answers 200 once a model is loaded and the consumer holds an assignment.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ScorerMetrics:
    """Every metric the scorer exports (names start with ``anomstream_scorer_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("anomstream_scorer_records_consumed", "Telemetry records consumed", registry=r)
        self.scored = Counter("anomstream_scorer_records_scored", "Telemetry records scored", registry=r)
        self.anomalies = Counter("anomstream_scorer_anomalies", "Anomaly records produced", registry=r)
        self.dead_letters = Counter(
            "anomstream_scorer_dlq_records", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.incidents = Counter(
            "anomstream_scorer_incidents",
            "Incidents opened and closed, and events of muted incidents (on the incident topic)",
            ["event"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "anomstream_scorer_batch_duration_seconds",
            "Time to decode, score and commit one batch",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "anomstream_scorer_batch_records",
            "Records per batch",
            buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000),
            registry=r,
        )
        self.lag = Gauge("anomstream_scorer_consumer_lag", "High watermark minus position", ["partition"], registry=r)
        self.assigned = Gauge("anomstream_scorer_assigned_partitions", "Partitions assigned", registry=r)
        self.model_info = Gauge(
            "anomstream_scorer_model_info",
            "The model serving (value 1)",
            ["model", "version", "detector", "device"],
            registry=r,
        )
        self.model_reloads = Counter("anomstream_scorer_model_reloads", "Models swapped in", registry=r)
        self.model_load_failures = Counter(
            "anomstream_scorer_model_load_failures",
            "Model versions refused (integrity or load error)",
            ["model"],
            registry=r,
        )
        self.transient_errors = Counter(
            "anomstream_scorer_transient_errors", "Retried faults (registry, broker)", ["kind"], registry=r
        )
        self.aborted = Counter("anomstream_scorer_transactions_aborted", "Transactions aborted", registry=r)
        self.warming_up = Counter(
            "anomstream_scorer_readings_warming_up",
            "Readings scored while their device's windows fill (never flagged)",
            registry=r,
        )
        self.flag_rate = Gauge(
            "anomstream_scorer_flag_rate",
            "Fraction of readings flagged by the serving model since it started serving (compare target_far)",
            ["model", "version"],
            registry=r,
        )
        self.target_far = Gauge(
            "anomstream_scorer_target_far",
            "The serving model's calibrated false-alarm rate",
            ["model", "version"],
            registry=r,
        )
        self._model: tuple[str, str] | None = None
        self._flagged_since_swap, self._scored_since_swap = 0, 0
        self.rebuild_records = Counter(
            "anomstream_scorer_history_records_read", "Records read back to rebuild device history", registry=r
        )
        self.history_devices = Gauge("anomstream_scorer_history_devices", "Devices with history held", registry=r)
        self.history_bytes = Gauge(
            "anomstream_scorer_history_bytes", "Memory held by device history (estimated)", registry=r
        )
        self.history_evicted = Counter(
            "anomstream_scorer_history_evicted_devices",
            "Devices dropped from history under its memory budget (read back if they return)",
            registry=r,
        )

    def set_model(self, name: str, version: int, detector: str, device: str, target_far: float) -> None:
        """Show ``name``/``version`` as the one model serving; its live flag rate starts again."""
        for gauge in (self.model_info, self.flag_rate, self.target_far):
            gauge.clear()
        self.model_info.labels(name, str(version), detector, device).set(1)
        self.target_far.labels(name, str(version)).set(target_far)
        self.flag_rate.labels(name, str(version)).set(0.0)
        self._model = (name, str(version))
        self._flagged_since_swap, self._scored_since_swap = 0, 0

    def count_flags(self, scored: int, flagged: int) -> None:
        """Add a batch to the serving model's live flag rate."""
        self._flagged_since_swap += flagged
        self._scored_since_swap += scored
        if self._scored_since_swap and self._model is not None:
            self.flag_rate.labels(*self._model).set(self._flagged_since_swap / self._scored_since_swap)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness, updated by the scoring loop."""

    def __init__(self, stall_after_s: float = 120.0) -> None:
        self.stall_after_s = stall_after_s
        self.model_loaded = False
        self.assigned = False
        self._tick = time.monotonic()

    def tick(self) -> None:
        """The loop made progress (call once per iteration)."""
        self._tick = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._tick < self.stall_after_s

    @property
    def ready(self) -> bool:
        return self.alive and self.model_loaded and self.assigned


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one threaded HTTP server.

    Args:
        metrics: what ``/metrics`` shows.
        health: what ``/healthz`` and ``/readyz`` answer.
        host: address to bind.
        port: port to bind (0: a free one; see :attr:`port`).
    """

    def __init__(self, metrics: ScorerMetrics, health: Health, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", self.host, self.port,
                    extra={"metrics_port": self.port})  # fmt: skip
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: ScorerMetrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200 if health.alive else 503, b"ok\n" if health.alive else b"stalled\n")
            elif path == "/readyz":
                self._send(200 if health.ready else 503, b"ready\n" if health.ready else b"not ready\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
            logger.debug("http: " + format, *args)

    return Handler
