"""logger=mlflow and logger=wandb: a real training run, read back through MLflow's own client, through the
`mlflow ui` server's REST API, and through the W&B offline run folder's files; run names."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from medclass.logger import job_suffix, run_name, swept_keys
from medclass.tasks.train import train

from .conftest import FAST, compose_train, run_script, write_npz

NAME = "breastmnist-cnn-seed42"  # what run() trains: data.name=breastmnist, model=cnn, seed 42


def run(tmp: Path, logger: str, name: str) -> tuple[dict, Path]:
    root = write_npz(tmp / "medmnist", "breastmnist", n=(48, 16, 16)).parent
    out = tmp / name
    cfg = compose_train([f"data.root={root}", "data.name=breastmnist", f"logger={logger}", *FAST], out)
    return train(cfg), out


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """One logger=mlflow training, read back by the store and UI tests."""
    return run(tmp_path_factory.mktemp("mlflow"), "mlflow", "run")


def test_mlflow_store_holds_the_flat_config_the_metrics_and_the_run_files(mlflow_run: tuple[dict, Path],
                                                                          tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    metrics, out = mlflow_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")  # compose_train puts paths.log_dir there
    experiment = client.get_experiment_by_name("medclass")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    logged = runs[0]
    assert logged.info.run_name == NAME
    config = yaml.safe_load((out / "config.yaml").read_text())
    params = logged.data.params
    assert params["model._target_"] == config["model"]["_target_"] == "medclass.model.SimpleCNN"
    assert params["data.batch_size"] == str(config["data"]["batch_size"]) and params["seed"] == str(config["seed"])
    assert abs(logged.data.metrics["test/acc"] - metrics["test"]["test/acc"]) < 1e-6
    assert "train/loss_step" in logged.data.metrics and "val/acc" in logged.data.metrics
    assert logged.data.tags["output_dir"] == str(out)

    def walk(path: str | None = None) -> list[str]:
        found = []
        for item in client.list_artifacts(logged.info.run_id, path):
            found += walk(item.path) if item.is_dir else [item.path]
        return found

    artifacts = walk()
    assert {"metrics.json", "config.yaml", "split.csv"} <= set(artifacts)
    assert any(a.endswith(".ckpt") for a in artifacts)  # log_model: the checkpoints
    local = Path(client.download_artifacts(logged.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads((out / "metrics.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, endpoint: str, body: dict | None = None) -> dict:
    """One call to the MLflow REST API (GET without a body, POST with one)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_ui_serves_the_run_by_its_name_over_its_rest_api(mlflow_run: tuple[dict, Path], tmp_path: Path) -> None:
    """`mlflow ui` (the full mlflow package the extra installs) opens the run's SQLite store on the loopback
    address; the run reads back by its descriptive name, finished, with metrics.json's test accuracy."""
    _, out = mlflow_run
    port, log = free_port(), (tmp_path / "ui.log").open("w+")
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{out}/mlflow.db",
                           "--artifacts-destination", str(out / "mlruns"), "--host", "127.0.0.1",
                           "--port", str(port), "--workers", "1"],
                          stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                          # no background job workers (MLflow's GenAI jobs): seven more processes to start
                          # and to outlive the server otherwise
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                               "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                experiment = rest(base, "experiments/get-by-name?experiment_name=medclass")["experiment"]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                log.seek(0)
                if ui.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow ui did not answer on {base} ({err}; exit {ui.poll()}):\n{log.read()[-3000:]}")
                time.sleep(0.5)
        runs = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 1
        info, data = runs[0]["info"], runs[0]["data"]
        assert info["run_name"] == NAME
        assert {"key": "mlflow.runName", "value": NAME} in data["tags"]  # what the UI's run list shows
        assert info["status"] == "FINISHED"
        served = {m["key"]: m["value"] for m in data["metrics"]}
        written = json.loads((out / "metrics.json").read_text())
        assert abs(served["test/acc"] - written["test"]["test/acc"]) < 1e-6 and "val/acc" in served
        again = rest(base, f"runs/get?run_id={info['run_id']}")["run"]  # the run's own page reads it too
        assert again["info"]["run_name"] == NAME
    finally:  # the server's own process group: `mlflow ui` and the uvicorn server it started
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        log.close()


def test_run_names_say_data_model_seed(tmp_path: Path) -> None:
    """Outside a sweep: `<data>-<model>-seed<seed>`; a timm model by its timm name, folder data by its
    data.name or folder, a manifest by its file name."""
    cases = {
        ("model=resnet18", "data.name=pneumoniamnist", "seed=1"): "pneumoniamnist-resnet18-seed1",
        ("model=timm", "model.name=convnext_atto", "data=folder", f"data.root={tmp_path}/xray/"):
            "xray-convnext_atto-seed42",
        ("data=manifest", f"data.manifest={tmp_path}/study/labels.csv"): "labels-cnn-seed42",
    }
    for overrides, name in cases.items():
        assert run_name(compose_train(list(overrides), tmp_path)) == name, overrides
    folder = compose_train(["data=folder", f"data.root={tmp_path}/xray", "data.name=chest"], tmp_path)
    assert run_name(folder) == "chest-cnn-seed42"


def test_a_sweep_jobs_name_adds_the_overrides_that_vary() -> None:
    argv = ["-m", "seed=1,2", "optimizer.lr=0.01,0.001", "data.batch_size=range(32,65,32)", "debug=fast",
            "model=cnn,resnet18", "/a/submitit/folder"]
    assert swept_keys(argv, ["model.dropout"]) == {"seed", "optimizer.lr", "data.batch_size", "model", "model.dropout"}
    task = ["seed=2", "optimizer.lr=0.001", "data.batch_size=64", "debug=fast", "model=resnet18", "+x=1"]
    assert job_suffix(task, swept_keys(argv, []), 5) == "-optimizer.lr=0.001-data.batch_size=64"
    assert job_suffix(task, {"seed", "model"}, 5) == ""  # the name already shows seed and model
    assert job_suffix(task, set(), 5) == "-job5"  # which keys vary is not known here


def test_a_multirun_job_reads_its_overrides_from_hydra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_name inside a `-m` job: Hydra's job config (mode, overrides, number), the command line, and the
    Optuna search space as what varies."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from .conftest import CONF

    def job(overrides: list[str], argv: list[str], num: int) -> str:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.job.num, cfg.hydra.overrides.task = "MULTIRUN", num, overrides
        monkeypatch.setattr(sys, "argv", ["train.py", *argv])
        HydraConfig.instance().set_config(cfg)
        try:
            return run_name(cfg)
        finally:
            HydraConfig.instance().cfg = None

    argv = ["-m", "seed=1,2,3", "optimizer.lr=0.01,0.1", "debug=fast"]
    assert job(["seed=3", "optimizer.lr=0.01", "debug=fast"], argv, 4) == "bloodmnist-cnn-seed3-optimizer.lr=0.01"
    assert job(["seed=3"], ["-m", "seed=1,2,3"], 2) == "bloodmnist-cnn-seed3"
    assert job(["hparams_search=optuna", "optimizer.lr=0.00123", "model.dropout=0.2"], ["hparams_search=optuna"],
               7) == "bloodmnist-cnn-seed42-optimizer.lr=0.00123-model.dropout=0.2"
    assert job(["seed=3"], ["/slurm/job/folder"], 2) == "bloodmnist-cnn-seed3-job2"  # a job in another process


@pytest.mark.slow
def test_a_real_sweep_names_each_mlflow_run_after_its_job(tmp_path: Path) -> None:
    """`train.py -m` with logger=mlflow: two jobs into one store, told apart by their varying override."""
    from mlflow.tracking import MlflowClient

    root = write_npz(tmp_path / "medmnist", "breastmnist", n=(48, 16, 16)).parent
    proc = run_script("train.py", "-m", f"data.root={root}", "data.name=breastmnist", "logger=mlflow", *FAST,
                      "optimizer.lr=0.01,0.002", f"paths.log_dir={tmp_path}/outputs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("medclass").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"{NAME}-optimizer.lr=0.002", f"{NAME}-optimizer.lr=0.01"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_wandb_offline_runs_hold_the_config_and_metrics_one_run_per_job(tmp_path: Path) -> None:
    folders = []
    for job in ("job0", "job1"):  # two jobs in one process, as in a sweep: each must get its own W&B run
        metrics, out = run(tmp_path, "wandb", job)
        offline = list((out / "wandb").glob("offline-run-*"))
        assert len(offline) == 1
        folder = offline[0]
        folders.append(folder.name)
        files = folder / "files"
        assert json.loads((files / "metrics.json").read_text()) == metrics
        assert yaml.safe_load((files / "config.yaml").read_text())["model"]["_target_"] == "medclass.model.SimpleCNN"
        records = next(folder.glob("run-*.wandb")).read_bytes()  # what `wandb sync` uploads
        for key in (b"model._target_", b"data.batch_size", b"test/acc", b"train/loss_step", NAME.encode()):
            assert key in records
    assert folders[0] != folders[1]
