"""A synthetic device fleet with injected anomalies and ground-truth labels, generated with numpy.

Each device has its own daily seasonality, base levels and noise, and channels correlated through a random
mixing matrix of a few latent signals. Anomalies of five kinds (spike, level shift, drift, stuck sensor,
correlation break) are injected on non-overlapping segments of each device's timeline at about
``anomaly_rate`` of the records; exactly the rows of a segment are labelled 1.

Deterministic for a seed and independent of the chunk size: noise is drawn per fixed block of rows from
its own seed stream, and anomalies from another, so ``anomaly_rate=0`` with the same seed gives the clean
signal the anomalies were injected into.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from anomstream.telemetry import TelemetryBatch

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck", "correlation_break")
# (shortest, longest) segment in records per kind, and how often each kind is picked.
_KIND_LENGTHS = np.array([(1, 3), (30, 120), (60, 240), (30, 120), (30, 150)])
_KIND_WEIGHTS = np.array([0.3, 0.2, 0.15, 0.15, 0.2])
_BLOCK_ROWS = 65_536  # rows drawn per noise block; fixed so output does not depend on chunk size
_DAY_MS = 86_400_000
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@dataclass(frozen=True)
class FleetSpec:
    """Parameters of a synthetic fleet.

    Attributes:
        devices: number of devices.
        records: total records over the whole fleet, shared evenly (the first devices get the remainder).
        channels: readings per record.
        seed: the random seed; the same spec gives the same records.
        anomaly_rate: approximate fraction of records inside an injected anomaly (0 for a clean fleet).
        start_ms: event time of every device's first record (epoch ms, UTC).
        step_ms: event-time step between a device's consecutive records.
    """

    devices: int = 10
    records: int = 100_000
    channels: int = 8
    seed: int = 0
    anomaly_rate: float = 0.01
    start_ms: int = DEFAULT_START_MS
    step_ms: int = 1000

    def __post_init__(self) -> None:
        if self.devices < 1 or self.records < 0 or self.channels < 1 or self.step_ms < 1:
            raise ValueError(f"invalid fleet {self}: need devices >= 1, records >= 0, channels >= 1, step >= 1")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ValueError(f"anomaly_rate {self.anomaly_rate} must be in [0, 0.5)")

    def records_per_device(self) -> np.ndarray:
        """How many records each device sends, in device order."""
        base, extra = divmod(self.records, self.devices)
        return np.full(self.devices, base, dtype=np.int64) + (np.arange(self.devices) < extra)

    def device_ids(self) -> np.ndarray:
        """The devices' ids (``sim-0000``, ``sim-0001``, ...) as an object array."""
        width = max(4, len(str(self.devices - 1)))
        return np.array([f"sim-{d:0{width}d}" for d in range(self.devices)], dtype=object)

    def channel_names(self) -> tuple[str, ...]:
        """The channel names (``sensor0``, ``sensor1``, ...)."""
        return tuple(f"sensor{c}" for c in range(self.channels))


@dataclass(frozen=True)
class AnomalySegments:
    """The injected anomalies, one entry per segment; a segment covers seq ``start <= s < end``.

    Attributes:
        device: device index (into ``FleetSpec.device_ids()``).
        kind: index into ``ANOMALY_KINDS``.
        start: first seq of the segment.
        end: one past its last seq.
        channel: the channel it disturbs.
        magnitude: signed size in units of the channel's scale (unused by stuck and correlation breaks).
    """

    device: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    end: np.ndarray
    channel: np.ndarray
    magnitude: np.ndarray

    def __len__(self) -> int:
        return len(self.device)


@dataclass(frozen=True)
class _Devices:
    """Per-device parameters: levels, seasonality, mixing and noise."""

    base: np.ndarray  # (N, C) channel levels
    amplitude: np.ndarray  # (N, K) latent daily amplitude
    phase: np.ndarray  # (N, K, 2) phase of the daily and half-daily harmonics
    latent_noise: np.ndarray  # (N, K)
    mixing: np.ndarray  # (N, C, K) how the latent signals drive the channels
    channel_noise: np.ndarray  # (N, C)
    scale: np.ndarray  # (N, C) typical spread of a channel, the unit of anomaly magnitudes


def iter_fleet(spec: FleetSpec, chunk_rows: int = 65_536) -> Iterator[TelemetryBatch]:
    """Yield the fleet's records in time order, devices interleaved, as batches of at most ``chunk_rows``.

    At each time step every device that still has records sends one; each device's ``seq`` counts from 0.

    Args:
        spec: the fleet.
        chunk_rows: the largest batch yielded.
    """
    devices = _draw_devices(spec)
    segments = plan_anomalies(spec)
    per_device = spec.records_per_device()
    steps_per_block = max(1, _BLOCK_ROWS // spec.devices)
    total_steps = int(per_device.max()) if spec.records else 0
    for block, first_step in enumerate(range(0, total_steps, steps_per_block)):
        batch = _block(spec, devices, segments, per_device, block, first_step, steps_per_block)
        for start in range(0, len(batch), chunk_rows):
            yield batch.take(slice(start, start + chunk_rows))


def generate_fleet(spec: FleetSpec) -> TelemetryBatch:
    """The whole fleet as one batch (for tests and small fleets; large ones should use :func:`iter_fleet`)."""
    batches = list(iter_fleet(spec, chunk_rows=max(1, spec.records)))
    if not batches:
        return TelemetryBatch(
            np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
            spec.channel_names(), np.zeros((0, spec.channels)), np.zeros(0, dtype=np.int8),
        )
    return TelemetryBatch.concat(batches)


def plan_anomalies(spec: FleetSpec) -> AnomalySegments:
    """Where the anomalies go: non-overlapping segments per device, about ``anomaly_rate`` of the records.

    Each device's timeline is cut into equal slots, one segment per slot at a random offset, so segments
    never touch and always leave clean records between them.

    Args:
        spec: the fleet.

    Returns:
        The segments, grouped by device.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2]))
    per_device = spec.records_per_device()
    mean_length = float((_KIND_WEIGHTS * _KIND_LENGTHS.mean(axis=1)).sum())
    # Rounded up or down at random (in proportion) so small devices still get their share of anomalies.
    expected = spec.anomaly_rate * per_device / mean_length
    counts = np.floor(expected) + (rng.random(spec.devices) < expected - np.floor(expected))
    counts = np.minimum(counts, per_device // 4).astype(np.int64)
    device = np.repeat(np.arange(spec.devices), counts)
    slot = np.arange(len(device)) - np.repeat(np.cumsum(counts) - counts, counts)
    slot_length = per_device[device] // np.maximum(counts[device], 1)
    kind = rng.choice(len(ANOMALY_KINDS), size=len(device), p=_KIND_WEIGHTS)
    low, high = _KIND_LENGTHS[kind, 0], _KIND_LENGTHS[kind, 1]
    length = np.minimum(rng.integers(low, high + 1), np.maximum(slot_length - 1, 1))
    start = slot * slot_length + rng.integers(0, np.maximum(slot_length - length, 0) + 1)
    sign = rng.choice(np.array([-1.0, 1.0]), size=len(device))
    return AnomalySegments(
        device=device,
        kind=kind,
        start=start,
        end=start + length,
        channel=rng.integers(0, spec.channels, size=len(device)),
        magnitude=sign * rng.uniform(5.0, 9.0, size=len(device)),
    )


def _draw_devices(spec: FleetSpec) -> _Devices:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    n, c = spec.devices, spec.channels
    k = max(1, math.ceil(c / 2))
    amplitude = rng.uniform(0.5, 2.0, size=(n, k))
    latent_noise = rng.uniform(0.1, 0.3, size=(n, k))
    mixing = rng.normal(0.0, 1.0, size=(n, c, k))
    channel_noise = rng.uniform(0.05, 0.2, size=(n, c))
    # Spread of a channel: its seasonal and latent-noise part through the mixing, plus its own noise.
    latent_var = 0.5 * amplitude**2 * 1.09 + latent_noise**2
    scale = np.sqrt(np.einsum("nck,nk->nc", mixing**2, latent_var) + channel_noise**2)
    return _Devices(
        base=rng.uniform(10.0, 100.0, size=(n, c)),
        amplitude=amplitude,
        phase=rng.uniform(0.0, 2 * np.pi, size=(n, k, 2)),
        latent_noise=latent_noise,
        mixing=mixing,
        channel_noise=channel_noise,
        scale=scale,
    )


def _seasonal(spec: FleetSpec, devices: _Devices, steps: np.ndarray) -> np.ndarray:
    """The latent daily pattern, ``(T, N, K)``, at the given time steps (a function of event time only)."""
    angle = (2 * np.pi * (steps * spec.step_ms % _DAY_MS) / _DAY_MS)[:, None, None]
    daily = np.sin(angle + devices.phase[None, :, :, 0])
    half_daily = np.sin(2 * angle + devices.phase[None, :, :, 1])
    return devices.amplitude[None] * (daily + 0.3 * half_daily)


def _block(
    spec: FleetSpec,
    devices: _Devices,
    segments: AnomalySegments,
    per_device: np.ndarray,
    block: int,
    first_step: int,
    steps_per_block: int,
) -> TelemetryBatch:
    """One block of time steps for all devices, anomalies injected, flattened time-major."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3, block]))
    steps = np.arange(first_step, min(first_step + steps_per_block, int(per_device.max())), dtype=np.int64)
    shape = (len(steps), spec.devices)
    latent = _seasonal(spec, devices, steps)
    latent += devices.latent_noise[None] * rng.standard_normal((*shape, latent.shape[2]))
    values = devices.channel_noise[None] * rng.standard_normal((*shape, spec.channels))
    values += devices.base[None]
    for k in range(latent.shape[2]):
        values += latent[:, :, k, None] * devices.mixing[None, :, :, k]
    label = np.zeros(shape, dtype=np.int8)
    _inject(spec, devices, segments, steps, latent, values, label)
    present = steps[:, None] < per_device[None, :]  # devices with fewer records stop early
    return TelemetryBatch(
        device_id=np.broadcast_to(spec.device_ids()[None, :], shape)[present],
        event_time_ms=np.broadcast_to((spec.start_ms + steps * spec.step_ms)[:, None], shape)[present],
        seq=np.broadcast_to(steps[:, None], shape)[present],
        channels=spec.channel_names(),
        values=values[present],
        label=label[present],
    )


def _inject(
    spec: FleetSpec,
    devices: _Devices,
    segments: AnomalySegments,
    steps: np.ndarray,
    latent: np.ndarray,
    values: np.ndarray,
    label: np.ndarray,
) -> None:
    """Apply the segments that overlap this block's steps, in place; one loop turn per segment."""
    first, stop = int(steps[0]), int(steps[-1]) + 1
    for i in np.flatnonzero((segments.start < stop) & (segments.end > first)):
        d, c, kind = int(segments.device[i]), int(segments.channel[i]), ANOMALY_KINDS[segments.kind[i]]
        seg_start, seg_end = int(segments.start[i]), int(segments.end[i])
        rows = slice(max(seg_start, first) - first, min(seg_end, stop) - first)
        size = segments.magnitude[i] * devices.scale[d, c]
        if kind in ("spike", "level_shift"):
            values[rows, d, c] += size
        elif kind == "drift":
            ramp = (steps[rows] - seg_start + 1) / (seg_end - seg_start)
            values[rows, d, c] += size * ramp
        elif kind == "stuck":
            # Frozen at the noiseless level of the segment's first step, so every stuck row differs.
            frozen = _seasonal(spec, devices, np.array([seg_start]))[0, d] @ devices.mixing[d, c]
            values[rows, d, c] = devices.base[d, c] + frozen
        else:  # correlation_break: the channel follows its latent drivers with the opposite sign
            values[rows, d, c] -= 2.0 * latent[rows, d] @ devices.mixing[d, c]
        label[rows, d] = 1
