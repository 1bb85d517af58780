"""logger=mlflow and logger=wandb: a real training run, read back through MLflow's own client and through
the W&B offline run folder's files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medclass.tasks.train import train

from .conftest import FAST, compose_train, write_npz


def run(tmp: Path, logger: str, name: str) -> tuple[dict, Path]:
    root = write_npz(tmp / "medmnist", "breastmnist", n=(48, 16, 16)).parent
    out = tmp / name
    cfg = compose_train([f"data.root={root}", "data.name=breastmnist", f"logger={logger}", *FAST], out)
    return train(cfg), out


def test_mlflow_store_holds_the_flat_config_the_metrics_and_the_run_files(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    metrics, out = run(tmp_path, "mlflow", "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")  # compose_train puts paths.log_dir there
    experiment = client.get_experiment_by_name("medclass")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    logged = runs[0]
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
        for key in (b"model._target_", b"data.batch_size", b"test/acc", b"train/loss_step"):
            assert key in records
    assert folders[0] != folders[1]
