"""Crafted model artifacts (checksums match: a writer, not damage, made them) are refused with a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomstream.detectors.iforest import ARRAYS_FILE, PARAMS_FILE
from anomstream.errors import AnomstreamError, ModelIntegrityError
from anomstream.model import MANIFEST, AnomalyModel
from anomstream.scoring.reload import warm_up
from anomstream.synthetic import FleetSpec, generate_fleet


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fleet = generate_fleet(FleetSpec(devices=2, records=1_200, channels=3, seed=2, anomaly_rate=0.0))
    model = AnomalyModel.fit(fleet, "iforest", per_device=True, params={"n_estimators": 5})
    folder = tmp_path_factory.mktemp("model")
    model.save(folder)
    return folder


def crafted(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "version" / "model"
    shutil.copytree(saved, copy)
    return copy


def rewrite_arrays(folder: Path, **changes: np.ndarray) -> None:
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    np.savez(folder / ARRAYS_FILE, **arrays)


def test_a_device_folder_outside_the_model_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = crafted(saved, tmp_path)
    shutil.copytree(folder / "global", tmp_path / "version" / "elsewhere")  # loadable, but no checksum covers it
    manifest = json.loads((folder / MANIFEST).read_text())
    device = next(iter(manifest["devices"]))
    for outside in ("../elsewhere", str(tmp_path / "version" / "elsewhere")):
        # a folder per device, as format-1 manifests name them
        manifest["devices"][device] = {"folder": outside, "threshold": manifest["devices"][device]["threshold"]}
        (folder / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ModelIntegrityError, match="outside the model"):
            AnomalyModel.load(folder)


def test_tree_children_past_the_kept_nodes_are_refused(saved: Path, tmp_path: Path) -> None:
    folder = crafted(saved, tmp_path) / "global"
    with np.load(folder / ARRAYS_FILE) as npz:
        left = npz["left"].copy()
    internal = np.argwhere(left >= 0)[0]
    left[tuple(internal)] = left.shape[1] + 5  # into scikit-learn's unchecked tree walk, were it not refused
    rewrite_arrays(folder, left=left)
    with pytest.raises(ModelIntegrityError, match="out-of-range nodes"):
        AnomalyModel.load(folder.parent)


def test_split_features_beyond_the_feature_count_are_refused(saved: Path, tmp_path: Path) -> None:
    folder = crafted(saved, tmp_path) / "global"
    with np.load(folder / ARRAYS_FILE) as npz:
        feature, left = npz["feature"].copy(), npz["left"]
    feature[left >= 0] = 10_000
    rewrite_arrays(folder, feature=feature)
    with pytest.raises(ModelIntegrityError, match="out-of-range nodes"):
        AnomalyModel.load(folder.parent)


def test_a_detector_for_another_feature_count_fails_before_serving(saved: Path, tmp_path: Path) -> None:
    folder = crafted(saved, tmp_path) / "global"
    state = json.loads((folder / PARAMS_FILE).read_text())
    state["n_features"] += 3
    (folder / PARAMS_FILE).write_text(json.dumps(state))
    rewrite_arrays(folder, credit_baseline=np.zeros(state["n_features"]))
    model = AnomalyModel.load(folder.parent)  # consistent in itself...
    with pytest.raises(AnomstreamError, match="expects"):
        warm_up(model)  # ...but not with the features: the scorer's warm-up refuses it, no batch ever sees it


def test_signed_versions_load_and_unsigned_or_altered_ones_are_refused(tmp_path: Path) -> None:
    from anomstream.model_store import MANIFEST as STORE_MANIFEST
    from anomstream.model_store import ModelStore

    fleet = generate_fleet(FleetSpec(devices=1, records=800, channels=3, seed=3, anomaly_rate=0.0))
    model = AnomalyModel.fit(fleet, "iforest", params={"n_estimators": 5})
    key = b"a shared secret"
    signed = ModelStore(tmp_path, signing_key=key)
    assert signed.publish("pumps", model, promote="always").version == 1
    assert signed.load("pumps").version == 1
    assert ModelStore(tmp_path).load("pumps").version == 1  # a store without a key does not check
    with pytest.raises(ModelIntegrityError, match="does not match"):
        ModelStore(tmp_path, signing_key=b"another key").load("pumps")
    ModelStore(tmp_path).publish("pumps", model, promote="always")  # version 2, unsigned
    with pytest.raises(ModelIntegrityError, match="not signed"):
        signed.load("pumps")
    # a writer without the key edits what the manifest says (the files' checksums still hold)
    manifest_path = signed.path("pumps", 1) / STORE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["promotion"]["reason"] = "trust me"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="does not match"):
        signed.load("pumps", 1)
    with pytest.raises(ModelIntegrityError, match="does not match"):
        signed.verify("pumps", 1)
