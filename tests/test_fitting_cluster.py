"""Per-device fits on a real Dask distributed scheduler with two workers on loopback (``dask scheduler`` and
``dask worker`` processes, as a cluster is run): the same models as fitted here, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from anomstream import fitting
from anomstream.errors import ConfigError
from anomstream.model import AnomalyModel
from tests.test_model import FAST_IFOREST, FLEET, readings

DASK = str(Path(sys.executable).parent / "dask")


def _start(folder: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (folder / f"{name}.log").open("w")
    return subprocess.Popen([DASK, *args, "--host", "127.0.0.1", "--no-dashboard"], stdout=log, stderr=log)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("dask")
    file = folder / "scheduler.json"
    processes = [_start(folder, "scheduler", "scheduler", "--port", "0", "--scheduler-file", str(file))]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip():
            assert processes[0].poll() is None, (folder / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the Dask scheduler wrote no scheduler file within 60 s"
            time.sleep(0.1)  # polling for the file, bounded by the deadline
        address = json.loads(file.read_text())["address"]
        processes += [_start(folder, f"worker-{i}", "worker", address, "--nthreads", "1") for i in range(2)]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["iforest", "pca"])
def test_fits_on_a_dask_cluster_give_the_same_models_as_here(scheduler: str, detector: str) -> None:
    batch = readings(FLEET, 3000, seed=13)
    params = FAST_IFOREST if detector == "iforest" else {}
    here = AnomalyModel.fit(batch, detector, per_device=True, seed=3, params=params)
    remote = AnomalyModel.fit(batch, detector, per_device=True, seed=3, params=params, cluster=scheduler)
    assert set(remote.device_detectors) == set(here.device_detectors) and here.device_detectors
    assert remote.device_thresholds == here.device_thresholds
    probe = readings(FLEET, 900, seed=14)
    first, second = here.score(probe, explain="all"), remote.score(probe, explain="all")
    assert np.array_equal(first.score, second.score) and np.array_equal(first.contributions, second.contributions)
    with Client(scheduler, timeout=30) as client:  # the fits ran there: its workers executed them
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(executed) == 2 and sum(executed.values()) >= len(FLEET), executed


def test_an_unreachable_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fitting, "CONNECT_TIMEOUT_S", 3.0)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        AnomalyModel.fit(readings(FLEET, 1500, seed=15), "pca", per_device=True, cluster="tcp://127.0.0.1:9")
