"""--executor ray: a sweep's cells as tasks on a real Ray cluster started here, same numbers as local."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli

from pipelines.checkpoint import latest_checkpoint
from pipelines.results_log import read_results
from pipelines.training_summary import TrainingSummary

SMOKE = ["sweep", "--preset", "smoke", "--factors", "1,4", "--inception-samples", "0"]
# what differs between two runs of the same cell: clocks and memory, never the measurements
TIMING = ("second", "sec_per", "per_s", "peak_mem", "memory", "device_name", "threads")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real one-node Ray cluster on 127.0.0.1 (2 CPUs), as `ray start` makes one on any machine."""
    import ray

    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    # a throw-away cluster on 127.0.0.1: no token authentication (driver and cluster would have to share one)
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def _measurements(run_dir: Path) -> dict[str, dict]:
    out = {}
    for record in read_results(run_dir).records:
        if record.key == "environment":
            continue
        data = json.loads(json.dumps(record.to_json(), default=str))
        out[record.key] = {k: v for k, v in data.items() if not any(t in k for t in TIMING)}
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _kill_once(status: Path, checkpoints: Path, killed: list[int]) -> None:
    """SIGKILL the worker that runs the f = 4 model once it has saved a checkpoint mid-training (Ray must retry it)."""
    deadline = time.time() + 600
    while time.time() < deadline:
        if status.is_file() and latest_checkpoint(checkpoints) is not None:
            pid = json.loads(status.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_sweep_on_ray_matches_local_and_survives_a_killed_worker(tmp_path: Path, ray_cluster: str) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    # 60 training steps with a checkpoint every 10: the worker dies mid-training, the retry continues
    sweep = [*SMOKE, "--train-budget", "60", "--checkpoint-every", "10"]
    assert run_cli(*sweep, "--out", local) == 0

    killed: list[int] = []
    watcher = threading.Thread(target=_kill_once, daemon=True, args=(
        on_ray / "cells" / "model-kl-f4.json", on_ray / "models" / "ldm-kl-f4", killed))
    watcher.start()
    assert run_cli(*sweep, "--out", on_ray, "--executor", "ray", "--ray-address", ray_cluster,
                   "--cell-cpus", "2") == 0
    watcher.join(5)
    assert killed, "the f = 4 model's worker was never seen"
    assert not (on_ray / "failures").exists()  # Ray retried the killed cell; nothing failed
    resumed = TrainingSummary.load(on_ray / "models" / "ldm-kl-f4" / "training.json").resumed_at_step
    assert 10 <= resumed < 60 and resumed % 10 == 0  # the retry continued the dead worker's checkpoint
    assert TrainingSummary.load(local / "models" / "ldm-kl-f4" / "training.json").resumed_at_step == 0

    a, b = _measurements(local), _measurements(on_ray)
    assert a.keys() == b.keys() and len(a) >= 10  # every record, once: the driver alone wrote the log
    different = [key for key in a if not _same(a[key], b[key])]
    assert not different, f"records that differ between executors: {different}"
    where = json.loads((on_ray / "cells" / "model-pixel-f1.json").read_text())
    assert where["cell"] == "model pixel f1" and where["pid"] != os.getpid()  # it ran in a Ray worker

    # resumed on Ray: every cell is finished, nothing runs again, the log is unchanged
    logged = (on_ray / "results.jsonl").read_text()
    assert run_cli(*sweep, "--out", on_ray, "--executor", "ray", "--ray-address", ray_cluster, "--resume") == 0
    assert (on_ray / "results.jsonl").read_text() == logged


def test_evaluate_on_ray_matches_local(tmp_path: Path, ray_cluster: str, tiny_ldm: Path,
                                       tiny_class_ldm: Path) -> None:
    """evaluate --executor ray: each model is a task; same FIDs as local, the classifier read from the run folder."""
    args = ["evaluate", tiny_ldm, tiny_class_ldm, "--reference", "fashion-mnist", "--backend", "domain",
            "--classifier-steps", "30", "--n", "16", "--ddim-steps", "2", "--batch-size", "8",
            "--bootstrap-resamples", "10"]
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run_cli(*args, "--out", local) == 0
    # --cell-cpus 2: Ray gives a task as many threads as CPUs, and a sum over 2 threads rounds differently than
    # over 1; with the driver's thread count the numbers are the same
    assert run_cli(*args, "--out", on_ray, "--executor", "ray", "--ray-address", ray_cluster, "--cell-cpus", "2") == 0
    a, b = _measurements(local), _measurements(on_ray)
    assert sum(k.startswith("fid") for k in a) == 2 and a.keys() == b.keys()
    different = [key for key in a if not _same(a[key], b[key])]
    assert not different, f"records that differ between executors: {different}"
    where = json.loads((on_ray / "cells" / f"model-{tiny_class_ldm.name}.json").read_text())
    assert where["pid"] != os.getpid()  # measured in a Ray worker
    logged = (on_ray / "results.jsonl").read_text()
    assert run_cli(*args, "--out", on_ray, "--executor", "ray", "--ray-address", ray_cluster, "--resume") == 0
    assert (on_ray / "results.jsonl").read_text() == logged  # every model measured: nothing runs again


def test_auto_joins_this_machines_cluster_and_local_starts_its_own(ray_cluster: str) -> None:
    import ray

    from ldm_eval.sweeps.executor import connect

    def port(ray) -> str:  # the GCS port tells clusters apart (the host may read 127.0.0.1 or the node's IP)
        return ray.get_runtime_context().gcs_address.rpartition(":")[2]

    ray.shutdown()
    try:
        assert port(connect("auto")) == ray_cluster.rpartition(":")[2]  # the one `ray start` made here
        ray.shutdown()
        assert port(connect("local")) != ray_cluster.rpartition(":")[2]  # a new one-machine instance
    finally:
        ray.shutdown()


def test_ray_refusals_come_before_anything_starts(tmp_path: Path, ray_cluster: str, capsys) -> None:
    out = tmp_path / "r"
    assert run_cli(*SMOKE, "--out", out, "--executor", "ray", "--ray-address", ray_cluster, "--cell-gpus", "1") == 2
    assert "asks for 1 GPU(s), but no node of the Ray cluster has more than 0" in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_cluster_and_missing_ray(tmp_path: Path, capsys, monkeypatch) -> None:
    import ray

    ray.shutdown()  # a fresh connection, as a new command would make
    began = time.time()
    address = f"127.0.0.1:{_free_port()}"
    assert run_cli(*SMOKE, "--out", tmp_path / "a", "--executor", "ray", "--ray-address", address) == 2
    assert time.time() - began < 30
    err = capsys.readouterr().err
    assert f"No Ray cluster answers at {address}" in err and "ray start --head" in err
    assert not (tmp_path / "a").exists()

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert run_cli(*SMOKE, "--out", tmp_path / "b", "--executor", "ray") == 2
    assert "needs Ray, which is not installed: pip install 'ray==2.60.0'" in capsys.readouterr().err
