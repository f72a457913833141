"""PyTorch autoencoder detectors: ``dense-ae`` over feature rows, ``conv-ae`` over trailing windows.

Both learn to reconstruct normal telemetry; a reading the network cannot reconstruct is anomalous. The score
of a row is the mean squared reconstruction error over its features (float64), its contributions are the
per-feature squared errors, so ``score(X) == contributions(X).mean(axis=1)``. Inputs are already
standardised by ``anomstream.features``; nothing is rescaled here.

- :class:`DenseAutoencoder` reconstructs single feature rows ``(n, F)`` through a narrow bottleneck.
- :class:`ConvAutoencoder` reconstructs windows ``(n, W, F)`` (the last ``W`` readings of a device, newest
  last) with strided 1-D convolutions. By default a window scores the mean error over all its readings:
  causal, since windows are trailing, and on SKAB (per file, trained on the first 400 readings, W = 16, 32,
  60) it ranked anomalies clearly better than scoring only the newest reading (mean ROC-AUC 0.87-0.88 against
  0.79-0.82), whose reconstruction sits at the zero-padded edge. ``score_on="last"`` remains available
  when an alert must end as soon as the readings return to normal.

Training is seeded and deterministic (same data and seed give identical weights and scores; checked on CPU
by the tests and on an H100), stops early on a validation split of the training data, and runs on CUDA when
``device="auto"`` finds one. At most ``max_train_rows`` rows (windows) train, 200,000 by default: a longer
training range is sampled uniformly (seeded), so that a trainer given a million readings needs a bounded
amount of memory and time per epoch (``bench/fit_scale.py``). ``fit`` sets ``threshold_`` to a high
quantile of the validation split's scores; ``anomstream.model`` may override it with its own calibration.
``save`` writes a ``state_dict`` (``<name>.pt``) and a JSON file (``<name>.json``); ``load`` reads the
weights with ``torch.load(weights_only=True)``: no pickled code. A model trained on one device scores the same on the
other: dense-ae to within 1e-15, conv-ae to within about 1e-3 relative (cuDNN convolutions use TF32).

Speed of ``score`` on CPU (default sizes, ``bench/autoencoder_device.py``): dense-ae scores 100,000 rows x 8
features in 11 ms with 2 threads on an idle host (9 M rows/s; 30 M rows/s with 16 threads), and in
14-18 ms best of 7 on this project's 2 busy shared cores; conv-ae scores 0.15 M windows/s (``W=32, F=8``)
with 2 threads, 0.7 M with 16. On an H100: 48 M rows/s and 2.8 M windows/s, bound by moving the float64
input to the device.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from anomstream.detectors.base import Detector
from anomstream.errors import ConfigError, ModelError
from anomstream.features import Windows

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
VALIDATION_BLOCKS = 20  # contiguous blocks the validation split is drawn from (see _split)
MIN_TRAINING_ROWS = 10
DEFAULT_MAX_TRAIN_ROWS = 200_000  # training rows (windows) sampled at most; see _training_sample
_SAMPLE_STREAM = 1  # seed-sequence key of the training sample, apart from the split's and torch's streams


def resolve_device(device: str) -> torch.device:
    """Turn a device setting into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Returns:
        The torch device to train and score on.

    Raises:
        ModelError: CUDA was asked for explicitly but is not available (no silent fallback: a scorer
            configured for a GPU should say so rather than run slower than planned), or the name is unknown.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device={device!r} was requested but CUDA is not available to torch {torch.__version__} "
                "(no GPU, driver or CUDA build); use device='auto' to fall back to the CPU, or 'cpu'"
            )
        # cuBLAS is only deterministic with a fixed workspace; it reads this before its first handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise ModelError(f"device={device!r} is not a valid CUDA device name ({exc})") from exc
    raise ModelError(f"device={device!r} is unknown; use 'auto', 'cpu' or 'cuda'")


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the duration of a fit without disturbing the caller's random state or flags."""
    previous_mode = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda"
    ) else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_mode, warn_only=previous_warn_only)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices.

    The validation rows are whole contiguous blocks chosen at random rather than scattered rows: adjacent
    readings (and overlapping windows) are near-copies, so scattered validation rows would leak into
    training and make both early stopping and the threshold optimistic.
    """
    blocks = np.array_split(np.arange(n), min(VALIDATION_BLOCKS, n))
    n_val_blocks = min(len(blocks) - 1, max(1, round(len(blocks) * fraction)))
    chosen = np.random.default_rng(seed).permutation(len(blocks))[:n_val_blocks]
    is_val = np.zeros(n, dtype=bool)
    for block in chosen:
        is_val[blocks[block]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _training_sample(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Indices (ascending) of a seeded uniform sample of ``limit`` of ``n`` rows; ``None`` when all ``n`` train.

    Training memory (the float32 rows or windows on the device) and the time of an epoch grow with the
    rows; a uniform sample bounds both while keeping the mix of the whole training range (every device,
    every stretch of time) rather than, say, only its most recent part. The indices stay in time order so
    that the validation split still takes contiguous stretches of time (see ``_split``).
    """
    if limit is None or n <= limit:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SAMPLE_STREAM]))
    return np.sort(rng.choice(n, size=limit, replace=False))


def _first_line(exc: BaseException) -> str:
    """A short reason from an exception, leaving out torch's advice to load with ``weights_only=False``."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    if "weights_only" in line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line[:160]}"


class _TorchAutoencoder(Detector):
    """Training, scoring and persistence shared by the two autoencoders."""

    input_ndim: ClassVar[int]
    # Rows per scoring chunk when score_batch_size is None: small enough on CPU to stay in cache, large on
    # CUDA so that kernel launches and transfers are amortised (measured, see bench/autoencoder_device.py).
    cpu_chunk_rows: ClassVar[int]
    cuda_chunk_rows: ClassVar[int]

    def __init__(
        self,
        *,
        max_epochs: int,
        batch_size: int,
        learning_rate: float,
        weight_decay: float,
        patience: int,
        validation_fraction: float,
        threshold_quantile: float,
        score_batch_size: int | None,
        max_train_rows: int | None,
        device: str,
        progress: bool | None,
    ) -> None:
        _require(max_epochs >= 1, f"max_epochs must be >= 1, got {max_epochs}")
        _require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        _require(learning_rate > 0, f"learning_rate must be > 0, got {learning_rate}")
        _require(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
        _require(patience >= 1, f"patience must be >= 1, got {patience}")
        _require(0 < validation_fraction < 1, f"validation_fraction must be in (0, 1): {validation_fraction}")
        _require(0 < threshold_quantile <= 1, f"threshold_quantile must be in (0, 1]: {threshold_quantile}")
        _require(
            score_batch_size is None or score_batch_size >= 1,
            f"score_batch_size must be >= 1 or None, got {score_batch_size}",
        )
        _require(
            max_train_rows is None or max_train_rows >= MIN_TRAINING_ROWS,
            f"max_train_rows must be >= {MIN_TRAINING_ROWS} or None, got {max_train_rows}",
        )
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.threshold_quantile = threshold_quantile
        self.score_batch_size = score_batch_size
        self.max_train_rows = max_train_rows
        self.device = device
        self.progress = progress
        self.history_: list[dict[str, float]] = []
        self._network: nn.Module | None = None
        self._torch_device = torch.device("cpu")
        self.input_shape_: tuple[int, ...] = ()

    # -- subclass hooks ---------------------------------------------------------------------------------

    @abstractmethod
    def _architecture(self) -> dict[str, Any]:
        """The hyper-parameters that shape the network (part of ``params``)."""

    @abstractmethod
    def _build_network(self, input_shape: tuple[int, ...]) -> nn.Module:
        """A fresh network for inputs of ``input_shape`` (one row or one window, without ``n``)."""

    @abstractmethod
    def _feature_errors(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Per-feature squared reconstruction error ``(b, F)`` of the scored reading(s) of a batch."""

    # -- Detector -----------------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-serialisable (``device`` and ``progress`` are run-time, not recorded)."""
        return {
            **self._architecture(),
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "validation_fraction": self.validation_fraction,
            "threshold_quantile": self.threshold_quantile,
            "score_batch_size": self.score_batch_size,
            "max_train_rows": self.max_train_rows,
        }

    def fit(self, X: np.ndarray, seed: int = 0) -> Self:
        """Train on normal data, stop early on a validation split, calibrate ``threshold_`` on it.

        With more than ``max_train_rows`` rows, a seeded uniform sample of that many (in their order) is
        what trains and calibrates; ``Windows`` are materialised only for the sampled rows.

        Args:
            X: Standardised normal training features, ``(n, F)`` or ``(n, W, F)`` (an array or
                ``anomstream.features.Windows``) as the class expects.
            seed: Seeds the training sample, the split, the initial weights, dropout and the batch order.

        Returns:
            ``self``, fitted.

        Raises:
            ModelError: ``X`` has the wrong shape, too few rows, non-finite values, or the device is missing.
        """
        X = self._check_input(X if isinstance(X, Windows) else np.asarray(X), fitting=True)
        given = len(X)
        sample = _training_sample(given, self.max_train_rows, seed)
        if sample is not None:
            # Sample before materialising: indexing Windows keeps them lazy, so a million windows never
            # become an n x W x F array; only the sampled ones do below.
            X = X[sample]
        X = np.asarray(X)
        if not np.isfinite(X).all():
            raise ModelError(f"{self.name}: training data holds NaN or infinite values; impute or drop them")
        if len(X) < MIN_TRAINING_ROWS:
            raise ModelError(f"{self.name}: {len(X)} training rows are too few (need >= {MIN_TRAINING_ROWS})")
        device = resolve_device(self.device)
        train_index, val_index = _split(len(X), self.validation_fraction, seed)
        self.input_shape_ = tuple(int(d) for d in X.shape[1:])
        self._network, self._torch_device = None, device
        with _seeded(seed, device):
            network = self._build_network(self.input_shape_).to(device)
            self._train(network, X, train_index, val_index, seed, device)
        self._network = network.eval()
        self.threshold_ = float(np.quantile(self.score(X[val_index]), self.threshold_quantile))
        best = min(self.history_, key=lambda row: row["val_loss"])
        logger.info(
            "%s fitted on %d of %d rows %s on %s: %d epochs, best %d (validation loss %.4g), threshold %.4g",
            self.name, len(X), given, self.input_shape_, device, len(self.history_), best["epoch"],
            best["val_loss"], self.threshold_,
        )
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per row, ``(n,)`` float64; higher is more anomalous.

        Rows with NaN features score NaN (the feature pipeline is expected to have dealt with them).
        """
        return self._errors_in_chunks(X, per_feature=False)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per feature, ``(n, F)`` float64, non-negative."""
        return self._errors_in_chunks(X, per_feature=True)

    def save(self, directory: Path) -> list[str]:
        """Write ``<name>.pt`` (a ``state_dict``) and ``<name>.json`` into ``directory``.

        Returns:
            The two file names written.
        """
        network = self._fitted_network()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights_name, meta_name = f"{self.name}.pt", f"{self.name}.json"
        state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
        torch.save(state, directory / weights_name)
        meta = {
            "format_version": FORMAT_VERSION,
            "detector": self.name,
            "params": self.params(),
            "input_shape": list(self.input_shape_),
            "threshold": self.threshold_,
            "history": self.history_,
            "torch_version": torch.__version__,
        }
        try:
            text = json.dumps(meta, indent=2, allow_nan=False)
        except ValueError as exc:
            raise ModelError(f"{self.name}: threshold {self.threshold_!r} is not a finite number") from exc
        (directory / meta_name).write_text(text + "\n", encoding="utf-8")
        return [weights_name, meta_name]

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> Self:
        """Read a detector written by ``save``.

        Args:
            directory: The folder ``save`` wrote into.
            device: ``"cpu"``, ``"cuda"`` or ``"auto"``; the weights are mapped onto it.

        Raises:
            ModelError: A file is missing, truncated or corrupted, or does not match this detector.
        """
        directory = Path(directory)
        meta_path, weights_path = directory / f"{cls.name}.json", directory / f"{cls.name}.pt"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta["detector"] != cls.name or meta["format_version"] != FORMAT_VERSION:
                raise ValueError(f"it describes {meta['detector']!r} format {meta['format_version']}")
            detector = cls(**meta["params"], device=device)
            input_shape = tuple(int(d) for d in meta["input_shape"])
            threshold = float(meta["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"{meta_path}: not a readable {cls.name} description ({_first_line(exc)}); "
                "restore the model version or re-train"
            ) from exc
        torch_device = resolve_device(device)
        try:
            state = torch.load(weights_path, weights_only=True, map_location=torch_device)
        except Exception as exc:  # torch raises many types for damaged files; all mean the same here
            raise ModelError(
                f"{weights_path}: cannot read the {cls.name} weights ({_first_line(exc)}); the file is "
                f"missing, truncated or not written by {cls.__name__}.save(); restore the model version or "
                "re-train"
            ) from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{weights_path}: not a state_dict of tensors; restore the model or re-train")
        # The description says how big a network to build; the weights file says how big it is. Compare the two
        # on the meta device (shapes only, nothing allocated) before building it: a crafted description of
        # a huge network is refused here instead of exhausting memory.
        try:
            with torch.device("meta"):
                outline = detector._build_network(input_shape)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ModelError(f"{meta_path}: describes no buildable {cls.name} ({_first_line(exc)})") from exc
        described = {k: tuple(v.shape) for k, v in outline.state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in state.items()}
        if described != stored:
            raise ModelError(
                f"{weights_path}: weights do not fit the network described in {meta_path} (layer shapes "
                f"differ: {len(described)} described, {len(stored)} stored); restore the model or re-train"
            )
        network = detector._build_network(input_shape)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"{weights_path}: weights do not fit the network described in {meta_path} "
                f"({_first_line(exc)})"
            ) from exc
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            raise ModelError(f"{weights_path}: weights contain NaN or infinite values; re-train")
        detector._network = network.to(torch_device).eval()
        detector._torch_device = torch_device
        detector.input_shape_ = input_shape
        detector.threshold_ = threshold
        detector.history_ = list(meta.get("history", []))
        return detector

    # -- internals ----------------------------------------------------------------------------------------

    def _train(
        self,
        network: nn.Module,
        data: np.ndarray,
        train_index: np.ndarray,
        val_index: np.ndarray,
        seed: int,
        device: torch.device,
    ) -> None:
        """Mini-batch Adam on MSE over ``data[train_index]``; keeps the weights of the best validation epoch."""
        optimiser = torch.optim.Adam(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        # The data move to the device once, as float32 (no copy when they already are); training batches
        # are gathers through the training indices, so the training split is never copied whole.
        data_t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
        train_rows = torch.from_numpy(train_index).to(device)
        val_t = data_t[torch.from_numpy(val_index).to(device)]
        batch_order = torch.Generator().manual_seed(seed)
        best_loss, best_state, stale = math.inf, None, 0
        self.history_ = []
        with self._progress_bar() as bar:
            task = bar.add_task(self.name, total=self.max_epochs, train=math.nan, val=math.nan)
            for epoch in range(1, self.max_epochs + 1):
                network.train()
                total = torch.zeros((), device=device)
                for batch_index in torch.randperm(len(train_rows), generator=batch_order).split(self.batch_size):
                    batch = data_t[train_rows[batch_index.to(device)]]
                    optimiser.zero_grad(set_to_none=True)
                    loss = nn.functional.mse_loss(network(batch), batch)
                    loss.backward()
                    optimiser.step()
                    total += loss.detach() * len(batch_index)
                train_loss = float(total) / len(train_rows)
                val_loss = self._validation_loss(network, val_t)
                self.history_.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
                bar.update(task, completed=epoch, train=train_loss, val=val_loss)
                if val_loss < best_loss * (1 - 1e-4):
                    best_loss, stale = val_loss, 0
                    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        if best_state is None:
            raise ModelError(f"{self.name}: validation loss never became finite; lower learning_rate")
        network.load_state_dict(best_state)

    def _validation_loss(self, network: nn.Module, val_t: torch.Tensor) -> float:
        network.eval()
        total = torch.zeros((), dtype=torch.float64, device=val_t.device)
        with torch.inference_mode():
            for batch in val_t.split(self._chunk_rows()):
                total += ((network(batch) - batch) ** 2).sum(dtype=torch.float64)
        return float(total) / val_t.numel()

    def _progress_bar(self) -> Progress:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total}"),
            TextColumn("train {task.fields[train]:.4g}  val {task.fields[val]:.4g}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        )

    def _chunk_rows(self) -> int:
        if self.score_batch_size is not None:
            return self.score_batch_size
        return self.cuda_chunk_rows if self._torch_device.type == "cuda" else self.cpu_chunk_rows

    def _fitted_network(self) -> nn.Module:
        if self._network is None:
            raise ModelError(f"{self.name} is not fitted; call fit() or load() first")
        return self._network

    def _check_input(self, X: Any, fitting: bool = False) -> Any:
        expected = "(n, F)" if self.input_ndim == 2 else "(n, W, F)"
        if X.ndim != self.input_ndim:
            raise ModelError(f"{self.name} expects {expected} features, got an array of shape {X.shape}")
        if not fitting and tuple(X.shape[1:]) != self.input_shape_:
            raise ModelError(
                f"{self.name} was fitted on rows of shape {self.input_shape_}, got {tuple(X.shape[1:])}: "
                "the feature spec changed since training; re-train"
            )
        return X

    def _errors_in_chunks(self, X: np.ndarray | Windows, per_feature: bool) -> np.ndarray:
        network = self._fitted_network()
        windows = X if isinstance(X, Windows) else None
        X = self._check_input(X if windows is not None else np.asarray(X))
        n, n_features = len(X), self.input_shape_[-1]
        out = np.empty((n, n_features) if per_feature else (n,), dtype=np.float64)
        chunk_rows = self._chunk_rows()
        with torch.inference_mode():
            if windows is not None:  # the rows go to the device once; each chunk's windows are gathered there
                points = torch.from_numpy(np.ascontiguousarray(windows.points, dtype=np.float32))
                points = points.to(self._torch_device)
            for start in range(0, n, chunk_rows):
                if windows is not None:
                    index = torch.from_numpy(windows.index[start : start + chunk_rows]).to(self._torch_device)
                    chunk = points[index]
                else:  # one chunk at a time: a strided view (sliding windows) is never copied whole
                    rows = np.ascontiguousarray(X[start : start + chunk_rows], dtype=np.float32)
                    chunk = torch.from_numpy(rows).to(self._torch_device)
                errors = self._feature_errors(network, chunk)
                # float64 before the mean so that score == contributions.mean(axis=1) to rounding.
                errors = errors.double() if per_feature else errors.double().mean(dim=1)
                out[start : start + len(chunk)] = errors.cpu().numpy()
        return out


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class _DenseNetwork(nn.Module):
    """Mirror-image MLP: ``F -> hidden... -> latent -> ...hidden -> F``."""

    def __init__(self, n_features: int, hidden: Sequence[int], latent: int, dropout: float) -> None:
        super().__init__()
        widths = [n_features, *hidden, latent]
        encoder: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Linear(width_in, width_out), nn.ReLU()]
            if dropout > 0:
                encoder.append(nn.Dropout(dropout))
        decoder: list[nn.Module] = []
        reverse = widths[::-1]
        for width_in, width_out in zip(reverse[:-1], reverse[1:], strict=True):
            decoder += [nn.Linear(width_in, width_out), nn.ReLU()]
        decoder.pop()  # linear output: standardised features are unbounded on both sides
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(rows))


class DenseAutoencoder(_TorchAutoencoder):
    """Dense (MLP) autoencoder over single standardised feature rows ``(n, F)``.

    Args:
        hidden: Widths of the encoder's hidden layers, widest first; the decoder mirrors them.
        latent: Bottleneck width; ``None`` picks ``max(1, F // 2)`` so that the network cannot learn the
            identity and must use the correlations between features.
        dropout: Dropout after each encoder layer while training (0 disables it).
        max_epochs: Cap on training epochs (early stopping usually ends sooner).
        batch_size: Training mini-batch size.
        learning_rate: Adam learning rate.
        weight_decay: Adam L2 penalty.
        patience: Epochs without a validation-loss improvement before stopping.
        validation_fraction: Share of the training rows held out (as contiguous blocks) for early stopping
            and the threshold.
        threshold_quantile: Quantile of the validation scores that ``fit`` sets ``threshold_`` to.
        score_batch_size: Rows per chunk when scoring (bounds memory, keeps the work vectorised); ``None``
            picks 65,536 on CPU and 262,144 on CUDA.
        max_train_rows: Most training rows used: with more, a seeded, uniform sample of this many rows (kept
            in time order, the same for the same data and seed) trains the network and calibrates the
            threshold, so memory and the time of an epoch stay bounded however long the training range is.
            Fits on at most this many rows are unaffected; ``None`` trains on every row.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, or ``"cuda"`` (a ``ModelError`` when
            CUDA is absent, rather than a silent fallback).
        progress: Show a rich progress bar while training; ``None`` shows it when stderr is a terminal.
    """

    name: ClassVar[str] = "dense-ae"
    input_ndim: ClassVar[int] = 2
    cpu_chunk_rows: ClassVar[int] = 65536
    cuda_chunk_rows: ClassVar[int] = 262144

    def __init__(
        self,
        hidden: Sequence[int] = (32, 16),
        latent: int | None = None,
        dropout: float = 0.0,
        max_epochs: int = 100,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 8,
        validation_fraction: float = 0.15,
        threshold_quantile: float = 0.995,
        score_batch_size: int | None = None,
        max_train_rows: int | None = DEFAULT_MAX_TRAIN_ROWS,
        device: str = "auto",
        progress: bool | None = None,
    ) -> None:
        _require(len(hidden) >= 1 and all(w >= 1 for w in hidden), f"hidden needs widths >= 1, got {hidden}")
        _require(latent is None or latent >= 1, f"latent must be >= 1 or None, got {latent}")
        _require(0 <= dropout < 1, f"dropout must be in [0, 1), got {dropout}")
        super().__init__(
            max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
            weight_decay=weight_decay, patience=patience, validation_fraction=validation_fraction,
            threshold_quantile=threshold_quantile, score_batch_size=score_batch_size,
            max_train_rows=max_train_rows, device=device, progress=progress,
        )
        self.hidden = tuple(int(w) for w in hidden)
        self.latent = latent
        self.dropout = dropout

    def _architecture(self) -> dict[str, Any]:
        return {"hidden": list(self.hidden), "latent": self.latent, "dropout": self.dropout}

    def _build_network(self, input_shape: tuple[int, ...]) -> nn.Module:
        (n_features,) = input_shape
        latent = self.latent if self.latent is not None else max(1, n_features // 2)
        return _DenseNetwork(n_features, self.hidden, latent, self.dropout)

    def _feature_errors(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (network(batch) - batch) ** 2


class _ConvNetwork(nn.Module):
    """Strided 1-D convolutions over time, mirrored by transposed convolutions.

    Each layer halves (then doubles) the time axis, so the code is ``W / 2**len(channels)`` steps long; the
    decoder's output is cropped back to ``W``.
    """

    def __init__(self, n_features: int, channels: Sequence[int], kernel_size: int, dropout: float) -> None:
        super().__init__()
        pad = kernel_size // 2
        widths = [n_features, *channels]
        encoder: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Conv1d(width_in, width_out, kernel_size, stride=2, padding=pad), nn.ReLU()]
            if dropout > 0:
                encoder.append(nn.Dropout(dropout))
        decoder: list[nn.Module] = []
        reverse = widths[::-1]
        for width_in, width_out in zip(reverse[:-1], reverse[1:], strict=True):
            decoder += [
                nn.ConvTranspose1d(width_in, width_out, kernel_size, stride=2, padding=pad, output_padding=1),
                nn.ReLU(),
            ]
        decoder.pop()
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        steps = windows.shape[1]
        # (n, F, W) channels-first and contiguous: oneDNN convolutions on a strided view run ~4x slower.
        series = windows.transpose(1, 2).contiguous()
        return self.decoder(self.encoder(series))[..., :steps].transpose(1, 2)


class ConvAutoencoder(_TorchAutoencoder):
    """1-D convolutional autoencoder over trailing windows ``(n, W, F)`` of a device's readings.

    The window ending at a reading holds that reading and the ``W - 1`` before it, so scoring is causal.

    Args:
        channels: Convolution widths of the encoder, each layer halving the time axis; the decoder mirrors.
        kernel_size: Odd kernel length in readings.
        dropout: Dropout after each encoder layer while training (0 disables it).
        score_on: ``"mean"`` (default) scores the mean error over the window's readings, which detected best
            on SKAB (see the module docstring); an anomaly then raises the score for up to ``W`` readings
            after it. ``"last"`` scores only the newest reading, so an alert ends with its readings.
        max_epochs: Cap on training epochs.
        batch_size: Training mini-batch size (windows).
        learning_rate: Adam learning rate.
        weight_decay: Adam L2 penalty.
        patience: Epochs without a validation-loss improvement before stopping.
        validation_fraction: Share of the training windows held out (as contiguous blocks).
        threshold_quantile: Quantile of the validation scores that ``fit`` sets ``threshold_`` to.
        score_batch_size: Windows per chunk when scoring; ``None`` picks 2,048 on CPU (cache-sized) and
            16,384 on CUDA.
        max_train_rows: Most training windows used: with more, a seeded, uniform sample of this many windows
            (kept in time order, the same for the same data and seed) trains and calibrates, and only those
            are materialised (200,000 windows of ``W=32, F=16`` are 410 MB of float32, a million would be
            2 GB, and an epoch's time grows with them). Fits on at most this many windows are unaffected;
            ``None`` trains on every window.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (a ``ModelError`` when CUDA is absent).
        progress: Show a rich progress bar while training; ``None`` shows it when stderr is a terminal.
    """

    name: ClassVar[str] = "conv-ae"
    input_ndim: ClassVar[int] = 3
    cpu_chunk_rows: ClassVar[int] = 2048
    cuda_chunk_rows: ClassVar[int] = 16384

    def __init__(
        self,
        channels: Sequence[int] = (32, 16),
        kernel_size: int = 7,
        dropout: float = 0.0,
        score_on: str = "mean",
        max_epochs: int = 100,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 8,
        validation_fraction: float = 0.15,
        threshold_quantile: float = 0.995,
        score_batch_size: int | None = None,
        max_train_rows: int | None = DEFAULT_MAX_TRAIN_ROWS,
        device: str = "auto",
        progress: bool | None = None,
    ) -> None:
        _require(len(channels) >= 1 and all(c >= 1 for c in channels), f"channels must be >= 1: {channels}")
        _require(kernel_size >= 1 and kernel_size % 2 == 1, f"kernel_size must be odd, got {kernel_size}")
        _require(0 <= dropout < 1, f"dropout must be in [0, 1), got {dropout}")
        _require(score_on in ("last", "mean"), f"score_on must be 'last' or 'mean', got {score_on!r}")
        super().__init__(
            max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
            weight_decay=weight_decay, patience=patience, validation_fraction=validation_fraction,
            threshold_quantile=threshold_quantile, score_batch_size=score_batch_size,
            max_train_rows=max_train_rows, device=device, progress=progress,
        )
        self.channels = tuple(int(c) for c in channels)
        self.kernel_size = kernel_size
        self.dropout = dropout
        self.score_on = score_on

    def _architecture(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "dropout": self.dropout,
            "score_on": self.score_on,
        }

    def _build_network(self, input_shape: tuple[int, ...]) -> nn.Module:
        _, n_features = input_shape
        return _ConvNetwork(n_features, self.channels, self.kernel_size, self.dropout)

    def _feature_errors(self, network: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if self.score_on == "last":
            return (network(batch)[:, -1, :] - batch[:, -1, :]) ** 2
        return ((network(batch) - batch) ** 2).mean(dim=1)
