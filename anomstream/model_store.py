"""The model store: versioned models on a shared folder, published atomically, loaded only when intact.

Layout under the store's root (``ANOMSTREAM_MODEL_DIR``)::

    <root>/<name>/<version>/          version = 1, 2, ...: the model's files, reports, manifest.json
    <root>/<name>/CURRENT             {"version": 3, "previous": [1, 2], "updated_at": ...}
    <root>/<name>/.lock               flock'd while a publication, promotion or rollback changes the name
    <root>/LATEST                     {"name": ..., "updated_at": ...}: the name made current most recently

``manifest.json`` records what the version is (detector, parameters, seed, features, thresholds), what it
was trained and evaluated on (``manifest_extra`` from the trainer), library versions, and the sha256 and
size of every other file in the folder. Nothing in a version folder is read before all of them match.

Publishing writes into ``<name>/.staging-*`` beside the versions, fsyncs, re-reads and verifies it (checksums,
the model loads, optionally that the loaded model scores a probe batch exactly as the fitted one), renames
it to its version number and only then replaces ``CURRENT`` (write aside + ``os.replace``). A crash at any
point leaves the current version as it was; a staging folder left by a crash is removed by the next
publication of that name (publications of a name are serialised by the lock, so none is in progress then).

Promotion gate (``promote``): ``always`` makes the new version current, ``never`` only stores it, ``auto``
stores it and makes it current unless it is *worse* than the current version on the same labelled
evaluation window: a lower F1, or an equal F1 (within 1e-9) with a higher false-alarm rate. The current
version's figures come from ``incumbent_metrics`` (the trainer scores the current model on the new
evaluation window) or, failing that, from the current manifest when its evaluation window is the same one.
Without labelled figures for both there is nothing to compare and ``auto`` makes the new version current.

Announcements: :func:`announce` puts one JSON value, keyed by the model name, on the compacted ``models``
topic; scorers reload ``current_version`` from the store when one arrives.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError, ModelError, ModelIntegrityError
from anomstream.jsonable import json_default
from anomstream.kafka_config import producer_config
from anomstream.model import AnomalyModel
from anomstream.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
LATEST = "LATEST"
MANIFEST_FORMAT = "anomstream-model/1"
SIGNATURE = "signature"  # manifest key of the version's HMAC-SHA256 (with a signing key)
PROMOTE_MODES = ("auto", "always", "never")
Promote = Literal["auto", "always", "never"]
_LOCK = ".lock"
_STAGING = ".staging-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TIE = 1e-9  # metric differences below this are ties
_LIBRARIES = ("numpy", "pandas", "scikit-learn", "torch", "confluent-kafka", "fastavro", "anomstream")


@dataclass(frozen=True)
class LoadedModel:
    """A verified model from the store.

    Attributes:
        name: the model's name in the store.
        version: its version number.
        model: the model, ready to score.
        manifest: its ``manifest.json``.
    """

    name: str
    version: int
    model: AnomalyModel
    manifest: dict[str, Any]


@dataclass(frozen=True)
class PublishResult:
    """What a publication did.

    Attributes:
        name: the model's name.
        version: the version it was stored as.
        path: its folder.
        current: whether it is now the current version.
        current_version: the current version after publication (the previous one when ``current`` is false).
        reason: why the gate decided so, for people.
        manifest: the manifest written.
    """

    name: str
    version: int
    path: Path
    current: bool
    current_version: int | None
    reason: str
    manifest: dict[str, Any]


class ModelStore:
    """Versioned models under ``root`` (see the module docstring for the layout and guarantees).

    Args:
        root: the store's folder; created on first publication.
        signing_key: with a key, every version published is signed (HMAC-SHA256 of its manifest, which holds
            the sha256 of every file), and a version that is unsigned or signed otherwise is refused when
            loaded or verified: checksums stop damage, the signature stops a writer without the key.
    """

    def __init__(self, root: str | Path, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.signing_key = signing_key or None

    def names(self) -> list[str]:
        """Model names with at least one version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _NAME.match(p.name) and p.is_dir() and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        """Stored versions of ``name``, ascending (staging folders of unfinished publications excluded)."""
        folder = self._name_dir(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def current_version(self, name: str) -> int | None:
        """The version scorers should serve, or ``None`` when none was made current."""
        pointer = self._read_pointer(name)
        return None if pointer is None else int(pointer["version"])

    def previous_versions(self, name: str) -> list[int]:
        """Versions that were current before the current one, the most recent first (none if CURRENT is unreadable)."""
        try:
            pointer = self._read_pointer(name)
        except ModelIntegrityError:
            return []
        return [int(v) for v in reversed(pointer.get("previous", []))] if pointer is not None else []

    def latest_name(self) -> str | None:
        """The name whose current version changed most recently (publication made current, promotion, rollback)."""
        path = self.root / LATEST
        if path.is_file():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                name = str(json.loads(path.read_text())["name"])
                if _NAME.match(name) and self._has_current(name):
                    return name
        # no LATEST (or it names a model since removed): the most recently changed CURRENT pointer
        changed = [((self._name_dir(n) / CURRENT).stat().st_mtime, n) for n in self.names() if self._has_current(n)]
        return max(changed)[1] if changed else None

    def path(self, name: str, version: int) -> Path:
        """The folder of a version (it may not exist)."""
        return self._name_dir(name) / str(int(version))

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        """The manifest of a version.

        Raises:
            ModelError: no such version.
            ModelIntegrityError: the manifest is unreadable.
        """
        return _read_manifest(self._existing(name, version))

    def verify(self, name: str, version: int) -> dict[str, Any]:
        """Check every file of a version against its manifest; return the manifest.

        Raises:
            ModelIntegrityError: a file is missing, unlisted, truncated or altered (says which and how).
        """
        folder = self._existing(name, version)
        manifest = _read_manifest(folder)
        self._check_signature(folder, manifest)
        _verify_files(folder, manifest)
        return manifest

    def load(self, name: str, version: int | None = None, device: str = "cpu") -> LoadedModel:
        """Verify, then load a version (the current one by default); ``device`` is ``cpu`` or ``cuda``.

        Raises:
            ModelError: no such model or version, or no current version.
            ModelIntegrityError: the files do not match the manifest; nothing was loaded.
        """
        if version is None:
            version = self.current_version(name)
            if version is None:
                known = ", ".join(map(str, self.versions(name))) or "none"
                raise ModelError(f"model {name!r} has no current version (stored: {known}); promote one")
        folder = self._existing(name, version)
        manifest = _read_manifest(folder)
        self._check_signature(folder, manifest)
        # Load from a private copy of the bytes that were verified: a file replaced on the shared folder
        # between the check and the load cannot slip in.
        with tempfile.TemporaryDirectory(prefix="anomstream-model-") as private:
            _verify_files(folder, manifest, copy_to=Path(private))
            model = AnomalyModel.load(private, device=device)
        return LoadedModel(name, int(version), model, manifest)

    def publish(
        self,
        name: str,
        model: AnomalyModel,
        manifest_extra: dict[str, Any] | None = None,
        promote: Promote = "auto",
        *,
        attachments: Callable[[Path], object] | None = None,
        probe: TelemetryBatch | None = None,
        incumbent_metrics: dict[str, Any] | None = None,
    ) -> PublishResult:
        """Store ``model`` as the next version of ``name`` atomically, and make it current if the gate agrees.

        Args:
            name: the model's name (letters, digits, ``.``, ``_``, ``-``).
            model: a fitted model.
            manifest_extra: merged into the manifest: ``training`` and ``evaluation`` (window, metrics), ...
            promote: ``auto``, ``always`` or ``never`` (see the module docstring).
            attachments: called with the version's (staging) folder to write more files, e.g. reports;
                they are checksummed like the model's.
            probe: rows the reloaded model must score exactly as ``model`` does (part of verification).
            incumbent_metrics: the current version's metrics on this version's evaluation window.

        Raises:
            ModelError: a bad name or promote mode, or verification failed (nothing was published).
        """
        if promote not in PROMOTE_MODES:
            raise ModelError(f"promote={promote!r}: use one of {', '.join(PROMOTE_MODES)}")
        extra = dict(manifest_extra or {})
        folder = self._name_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock(name):
            self._remove_stale_staging(name)
            version = max(self.versions(name), default=0) + 1
            current = self.current_version(name)
            make_current, reason = self._gate(name, current, extra, promote, incumbent_metrics)
            staging = folder / f"{_STAGING}{version}-{uuid.uuid4().hex[:8]}"
            try:
                manifest = _write_version(staging, name, version, model, extra, attachments)
                manifest["promotion"] = {"mode": promote, "made_current": make_current, "reason": reason}
                if self.signing_key is not None:
                    manifest[SIGNATURE] = {"algorithm": "hmac-sha256", "value": _sign(manifest, self.signing_key)}
                _write_json(staging / MANIFEST, manifest)
                _fsync_tree(staging)
                _verify_staged(staging, manifest, model, probe)
                os.rename(staging, self.path(name, version))
                _fsync_dir(folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if make_current:
                self._set_current(name, version, current)
        logger.info("published %s version %d (%s): %s", name, version, "current" if make_current else "stored", reason)
        return PublishResult(
            name,
            version,
            self.path(name, version),
            make_current,
            version if make_current else current,
            reason,
            manifest,
        )

    def promote(self, name: str, version: int) -> None:
        """Make a stored version current after checking its files.

        Raises:
            ModelError: no such version.
            ModelIntegrityError: its files do not match its manifest (it is not made current).
        """
        with self._lock(name):
            self.verify(name, version)
            current = self.current_version(name)
            if current != version:
                self._set_current(name, version, current)
        logger.info("%s: version %d is current", name, version)

    def rollback(self, name: str) -> int:
        """Make the previously current version current again; return it.

        Versions that were current before are remembered in ``CURRENT``; rolling back twice goes two steps
        back. A previous version whose folder is gone or fails verification is skipped.

        Raises:
            ModelError: there is no previous version to go back to.
        """
        with self._lock(name):
            pointer = self._read_pointer(name)
            if pointer is None:
                raise ModelError(f"model {name!r} has no current version to roll back from")
            previous = [int(v) for v in pointer.get("previous", [])]
            while previous:
                candidate = previous.pop()
                try:
                    self.verify(name, candidate)
                except ModelError as exc:
                    logger.warning("%s: skipping version %d on rollback: %s", name, candidate, exc)
                    continue
                self._write_pointer(name, candidate, previous)
                logger.info("%s: rolled back from version %d to %d", name, pointer["version"], candidate)
                return candidate
        raise ModelError(f"model {name!r} has no earlier current version to roll back to")

    # -- internals ------------------------------------------------------------------------------------------

    def _check_signature(self, folder: Path, manifest: dict[str, Any]) -> None:
        """With a signing key: the manifest must carry a signature made with it."""
        if self.signing_key is None:
            return
        signature = manifest.get(SIGNATURE)
        if not isinstance(signature, dict) or "value" not in signature:
            raise ModelIntegrityError(
                f"{folder / MANIFEST} is not signed, and a signing key is set: refused (sign it by publishing "
                "it again with ANOMSTREAM_MODEL_SIGNING_KEY)"
            )
        if not hmac.compare_digest(str(signature["value"]), _sign(manifest, self.signing_key)):
            raise ModelIntegrityError(
                f"{folder / MANIFEST} has a signature that does not match: altered, or signed with another key; "
                "refused"
            )

    def _name_dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (128 at most)")
        return self.root / name

    def _existing(self, name: str, version: int) -> Path:
        folder = self.path(name, version)
        if not folder.is_dir():
            known = ", ".join(map(str, self.versions(name))) or "none"
            raise ModelError(f"model {name!r} has no version {version} in {self.root} (stored: {known})")
        return folder

    def _has_current(self, name: str) -> bool:
        return (self._name_dir(name) / CURRENT).is_file()

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        folder = self._name_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / _LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_stale_staging(self, name: str) -> None:
        for stale in self._name_dir(name).glob(f"{_STAGING}*"):
            logger.warning("removing %s left by an interrupted publication", stale)
            shutil.rmtree(stale, ignore_errors=True)

    def _read_pointer(self, name: str) -> dict[str, Any] | None:
        path = self._name_dir(name) / CURRENT
        try:
            pointer = json.loads(path.read_text())
            int(pointer["version"])
            return pointer  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{path} is unreadable ({exc!r}): promote a version to rewrite it") from exc

    def _write_pointer(self, name: str, version: int, previous: list[int]) -> None:
        now = _now()
        _write_json(self._name_dir(name) / CURRENT, {"version": version, "previous": previous, "updated_at": now})
        _write_json(self.root / LATEST, {"name": name, "updated_at": now})

    def _set_current(self, name: str, version: int, current: int | None) -> None:
        pointer = self._read_pointer(name)
        previous = [int(v) for v in pointer.get("previous", [])] if pointer else []
        if current is not None:
            previous.append(current)
        self._write_pointer(name, version, previous)

    def _gate(
        self,
        name: str,
        current: int | None,
        extra: dict[str, Any],
        promote: str,
        incumbent_metrics: dict[str, Any] | None,
    ) -> tuple[bool, str]:
        if promote == "always":
            return True, "promotion forced (--promote always)"
        if promote == "never":
            return False, "stored without promotion (--promote never)"
        if current is None:
            return True, "first version made current"
        evaluation = extra.get("evaluation") or {}
        incumbent = incumbent_metrics
        if incumbent is None:
            try:
                current_evaluation = self.manifest(name, current).get("evaluation") or {}
            except ModelError:
                current_evaluation = {}
            if current_evaluation.get("window") is not None and current_evaluation.get("window") == evaluation.get(
                "window"
            ):
                incumbent = current_evaluation.get("metrics")
        return compare_metrics(evaluation.get("metrics"), incumbent, current)


def announce(
    kafka_settings: KafkaSettings,
    models_topic: str,
    name: str,
    version: int,
    manifest: dict[str, Any],
    *,
    current_version: int | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Announce a version on the compacted ``models`` topic (key: the model name); wait for delivery.

    The value is JSON: ``name``, ``version`` (the version this announcement is about), ``current_version``
    (the version to serve now: ``version`` unless the gate kept the previous one, or ``null``),
    ``detector``, ``per_device``, ``created_at``, ``announced_at``, ``metrics`` (evaluation figures, may be
    empty). Scorers load ``current_version`` from their store; the manifest itself stays in the store.

    Args:
        kafka_settings: the broker.
        models_topic: the announcement topic.
        name: the model name (the record key, so compaction keeps the last announcement per model).
        version: the version announced.
        manifest: its manifest.
        current_version: the version to serve now; defaults to ``version``.
        timeout_s: how long to wait for the broker's acknowledgement.

    Returns:
        The value sent.

    Raises:
        KafkaClientError: the broker did not acknowledge the announcement in time.
    """
    from confluent_kafka import KafkaError, Message, Producer

    value = {
        "name": name,
        "version": int(version),
        "current_version": int(version) if current_version is None else current_version,
        "detector": manifest.get("detector"),
        "per_device": manifest.get("per_device"),
        "created_at": manifest.get("created_at"),
        "announced_at": _now(),
        "metrics": (manifest.get("evaluation") or {}).get("metrics") or {},
    }
    failures: list[str] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    producer = Producer(producer_config(kafka_settings, "anomstream-model-store"))
    producer.produce(
        models_topic,
        key=name.encode(),
        value=json.dumps(value, default=json_default).encode(),
        on_delivery=on_delivery,
    )
    left = producer.flush(timeout_s)
    if left or failures:
        why = failures[0] if failures else f"not acknowledged within {timeout_s:.0f} s"
        raise KafkaClientError(f"announcing {name} version {version} on {models_topic}: {why}", retriable=True)
    logger.info("announced %s version %d on %s (current: %s)", name, version, models_topic, value["current_version"])
    return value


def compare_metrics(
    candidate: dict[str, Any] | None, incumbent: dict[str, Any] | None, current: int
) -> tuple[bool, str]:
    """The ``auto`` gate: whether a candidate may replace the current version, and why.

    Worse means a lower F1, or an equal F1 (within 1e-9) with a higher false-alarm rate (FAR). Without an
    F1 for both (no labels in the evaluation window) the candidate is made current.
    """
    if not candidate or not incumbent or candidate.get("f1") is None or incumbent.get("f1") is None:
        return True, f"no labelled evaluation comparable with version {current}; made current"
    f1, f1_current = float(candidate["f1"]), float(incumbent["f1"])
    far, far_current = float(candidate.get("far") or 0.0), float(incumbent.get("far") or 0.0)
    figures = f"F1 {f1:.4f} vs {f1_current:.4f}, FAR {far:.2f} vs {far_current:.2f} of version {current}"
    if f1 < f1_current - _TIE:
        return False, f"worse than the current version: {figures}; stored, not made current"
    if abs(f1 - f1_current) <= _TIE and far > far_current + _TIE:
        return False, f"same F1 but more false alarms than the current version: {figures}; stored, not made current"
    return True, f"not worse than the current version: {figures}"


def _write_version_files(
    staging: Path, model: AnomalyModel, attachments: Callable[[Path], object] | None
) -> dict[str, dict[str, Any]]:
    staging.mkdir(parents=True)
    model.save(staging)
    if attachments is not None:
        attachments(staging)
    return {
        relative: {"sha256": _sha256(staging / relative), "bytes": (staging / relative).stat().st_size}
        for relative in _files_of(staging)
    }


def _model_summary(model: AnomalyModel) -> dict[str, Any]:
    return {
        "detector": model.detector_name,
        "detector_params": model.detector_params,
        "config": model.config.to_dict(),
        "per_device": model.per_device,
        "seed": model.seed,
        "channels": list(model.channels),
        "features": model.pipeline.spec.to_dict(),
        "context": model.context,
        "thresholds": {"global": model.global_threshold, "devices": dict(model.device_thresholds)},
    }


def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for library in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[library] = metadata.version(library)
    return versions


def _write_version(
    staging: Path,
    name: str,
    version: int,
    model: AnomalyModel,
    extra: dict[str, Any],
    attachments: Callable[[Path], object] | None,
) -> dict[str, Any]:
    files = _write_version_files(staging, model, attachments)
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "name": name, "version": version, "created_at": _now()}
    manifest |= _model_summary(model)
    manifest |= {k: v for k, v in extra.items() if k not in manifest}
    manifest["libraries"] = _library_versions()
    manifest["files"] = files
    return manifest


def _sign(manifest: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the manifest without its signature, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _files_of(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the manifest, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelIntegrityError(f"{path} is missing: the version is incomplete; publish it again") from exc
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{path} is unreadable ({exc}): the version cannot be trusted") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ModelIntegrityError(f"{path} lists no files: the version cannot be trusted")
    return manifest


def _verify_files(folder: Path, manifest: dict[str, Any], copy_to: Path | None = None) -> None:
    """Every listed file present with its size and sha256, and no file that is not listed.

    With ``copy_to``, the bytes checked are also written there (same relative paths).
    """
    listed: dict[str, dict[str, Any]] = manifest["files"]
    for relative, expected in sorted(listed.items()):
        path = folder / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ModelIntegrityError(f"{folder / MANIFEST} lists {relative!r}, a path outside the version folder")
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelIntegrityError(f"{path} is missing (listed in {MANIFEST}): restore it or roll back") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.get("sha256"):
            size, expected_size = len(data), expected.get("bytes")
            how = "truncated" if isinstance(expected_size, int) and size < expected_size else "modified"
            raise ModelIntegrityError(
                f"{path} was {how}: sha256 {actual} ({size} bytes), the manifest expects "
                f"{expected.get('sha256')} ({expected_size} bytes); nothing was loaded: roll back or republish"
            )
        if copy_to is not None:
            (copy_to / relative).parent.mkdir(parents=True, exist_ok=True)
            (copy_to / relative).write_bytes(data)
    unlisted = sorted(set(_files_of(folder)) - set(listed))
    if unlisted:
        raise ModelIntegrityError(
            f"{folder} holds files its {MANIFEST} does not list: {', '.join(unlisted)}; nothing was loaded"
        )


def _verify_staged(staging: Path, manifest: dict[str, Any], model: AnomalyModel, probe: TelemetryBatch | None) -> None:
    """Re-read what was written: manifest, checksums, the model loads (and scores ``probe`` identically)."""
    if _read_manifest(staging) != json.loads(json.dumps(manifest)):
        raise ModelIntegrityError(f"{staging / MANIFEST} reads back differently from what was written")
    _verify_files(staging, manifest)
    loaded = AnomalyModel.load(staging)
    if probe is not None and len(probe):
        expected, actual = model.score(probe, explain="none").score, loaded.score(probe, explain="none").score
        if not np.allclose(expected, actual, rtol=1e-9, atol=1e-12, equal_nan=True):
            worst = float(np.nanmax(np.abs(expected - actual)))
            raise ModelIntegrityError(f"the reloaded model scores the probe rows differently (by up to {worst:.3g})")


def _write_json(path: Path, value: Any) -> None:
    """Write ``path`` atomically: a temporary file beside it, fsync, ``os.replace``, fsync the folder."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "w") as handle:
            json.dump(value, handle, indent=1, sort_keys=False, default=json_default)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)



def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            _fsync_dir(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
