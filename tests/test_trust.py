"""Trust (issue 19): checkpoints that cannot run code, splits and sweeps a reviewer can rely on, and the
small defects found by reading, each with the test that failed before its fix."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import multiprocessing as mp
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from medclass.augment import train_transform
from medclass.data.base import ArrayDataset, init_worker
from medclass.data.leakage import cross_split_duplicates
from medclass.module.checkpoint import load_classifier, read_hparams
from medclass.module.losses import make_loss
from medclass.tasks.evaluate import evaluate
from medclass.tasks.train import train
from medclass.utils.errors import MedclassError

from .conftest import CONF, FAST, ROOT, clean_tree, compose_train, run_script, write_npz

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


# -- checkpoints name registered networks and data kinds, never code -----------------------------------
def poisoned(blood_run: Path, tmp_path: Path, where: str, target: str) -> tuple[Path, Path]:
    """A copy of a real checkpoint whose hparams would delete `victim` if anything instantiated them."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt = torch.load(next((blood_run / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=True)
    payload = {"_target_": target, "_args_": [str(victim)]}
    if where == "net":
        ckpt["hyper_parameters"]["net"]["extra"] = {"nested": [payload]}
    else:
        ckpt["hyper_parameters"]["data_cfg"]["root"] = payload
    path = tmp_path / "poisoned.ckpt"
    torch.save(ckpt, path)
    return path, victim


@pytest.mark.parametrize(("where", "target", "message"), [
    ("net", "pathlib.Path.unlink", r"net.extra is not a key medclass writes here"),
    ("data_cfg", "medclass.data.splits.Path.unlink", r"data_cfg.root=\{'_target_': .*expected a string"),
    ("net", "os.remove", r"net.extra is not a key")])
def test_a_foreign_target_anywhere_in_a_checkpoint_is_refused(blood_run: Path, tmp_path: Path, where: str,
                                                              target: str, message: str) -> None:
    path, victim = poisoned(blood_run, tmp_path, where, target)
    with pytest.raises(MedclassError, match=message):
        load_classifier(path)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("target", ["pathlib.Path.unlink", "medclass.data.splits.Path.unlink", "builtins.eval"])
def test_a_network_target_that_is_not_registered_is_refused(blood_run: Path, tmp_path: Path, target: str) -> None:
    ckpt = torch.load(next((blood_run / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["net"] = {"_target_": target, "_args_": [str(tmp_path / "victim")]}
    torch.save(ckpt, tmp_path / "old-style.ckpt")
    with pytest.raises(MedclassError, match=rf"net._target_='{target}' is not one of medclass's networks"):
        load_classifier(tmp_path / "old-style.ckpt")


def test_eval_refuses_a_poisoned_checkpoint_with_one_error_line(blood_run: Path, tmp_path: Path) -> None:
    path, victim = poisoned(blood_run, tmp_path, "net", "pathlib.Path.unlink")
    proc = run_script("eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "net.extra is not a key medclass writes here" in errors[0]
    assert "Traceback" not in proc.stderr and victim.read_text() == "precious"


def test_resuming_from_a_poisoned_checkpoint_is_refused(blood_run: Path, blood_root: Path, tmp_path: Path) -> None:
    path, victim = poisoned(blood_run, tmp_path, "data_cfg", "medclass.data.splits.Path.unlink")
    cfg = compose_train([f"data.root={blood_root}", f"ckpt_path={path}", *FAST], tmp_path / "run")
    with pytest.raises(MedclassError, match=r"data_cfg.root=\{'_target_'"):
        train(cfg)
    assert victim.read_text() == "precious" and not (tmp_path / "run" / "checkpoints").exists()


SHIPPED = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
           for group in ("model", "optimizer", "scheduler", "augment", "data")}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in SHIPPED.items() for o in opts]
                         + [("experiment", p.stem) for p in sorted((CONF / "experiment").glob("*.yaml"))])
def test_every_shipped_config_maps_onto_the_registries(tmp_path: Path, group: str, option: str) -> None:
    """What a checkpoint of each shipped config records passes the schema a loaded checkpoint must pass."""
    from medclass.data import registry as data_registry
    from medclass.model import registry as model_registry
    from medclass.module.hparams import validate

    cfg = OmegaConf.to_container(compose_train([f"{group}={option}"], tmp_path), resolve=True)
    module = {k: v for k, v in cfg["module"].items() if not k.startswith("_")}
    info = {"task": "multi-class", "class_names": ["a", "b"], "in_chans": 1, "image_size": 28, "mean": [0.5],
            "std": [0.25]}
    hparams = {**module, "net": model_registry.describe(cfg["model"]), "data_info": info,
               "data_cfg": data_registry.describe(cfg["data"])}
    assert hparams["net"]["arch"] in model_registry.ARCHITECTURES
    assert validate(hparams, f"{group}={option}") == hparams  # raises for anything the schema misses


# -- splits that hold still, recorded in every run ---------------------------------------------------
@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Two short runs on one folder data set with seed=1 and seed=2 (the split's own seed left alone)."""
    tmp = tmp_path_factory.mktemp("folder_runs")
    root = clean_tree(tmp / "data", classes=("a", "b"), per_class=15)
    runs = []
    for seed in (1, 2):
        cfg = compose_train(["data=folder", f"data.root={root}", "data.image_size=16", f"seed={seed}", *FAST,
                             *QUIET], tmp / f"run{seed}")
        train(cfg)
        runs.append(tmp / f"run{seed}")
    return root, runs


def test_runs_with_other_seeds_share_the_split_and_record_it(folder_runs: tuple[Path, list[Path]]) -> None:
    root, runs = folder_runs
    for run in runs:
        rows = list(csv.DictReader((run / "split.csv").open()))
        assert len(rows) == 30 and all((root / r["path"]).is_file() and not Path(r["path"]).is_absolute()
                                       for r in rows)
        metrics = json.loads((run / "metrics.json").read_text())
        ckpt = torch.load(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True)
        assert metrics["data"]["split_key"] == ckpt["hyper_parameters"]["data_info"]["split_key"] != ""
        assert metrics["run"]["seed"] == int(run.name[-1])
    assert (runs[0] / "split.csv").read_text() == (runs[1] / "split.csv").read_text()


def test_eval_refuses_data_whose_split_moved(folder_runs: tuple[Path, list[Path]], tmp_path: Path) -> None:
    import shutil

    root, runs = folder_runs
    ckpt = next((runs[0] / "checkpoints").glob("best-*.ckpt"))
    changed = shutil.copytree(root, tmp_path / "data")  # the same data elsewhere, plus one late file
    (changed / "b" / "late.png").write_bytes((changed / "a" / "img0.png").read_bytes()[:-1] + b"\0")
    args = [f"ckpt_path={ckpt}", f"data.root={changed}", "report=false"]
    with pytest.raises(MedclassError, match="was trained on split"):
        evaluate(compose_train(args, tmp_path / "eval", config_name="eval"))
    scored = evaluate(compose_train([*args, "split_check=false"], tmp_path / "eval2", config_name="eval"))
    assert scored["split_key"] != json.loads((runs[0] / "metrics.json").read_text())["data"]["split_key"]


# -- a sweep survives a failing job --------------------------------------------------------------------
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    root = write_npz(tmp_path / "medmnist", "breastmnist").parent
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", *FAST, *QUIET, "data.name=breastmnist", f"data.root={root}",
                      "optimizer.lr=1e-3,-1,2e-3", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(summary) == 1 and summary[0].startswith("error: 2 of 3 jobs finished; failed: ")
    assert "optimizer.lr=-1" in summary[0] and "Invalid learning rate" in summary[0]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "1" / "error.txt").read_text().startswith("error: optimizer torch.optim.Adam: Invalid")
    from medclass.tasks.gather import load_failures, load_runs, summarize, to_markdown

    rows = {r["config"]: r for r in summarize(load_runs(sweep), failures=load_failures(sweep))}
    assert rows["optimizer.lr=-1"]["runs"] == 0 and rows["optimizer.lr=-1"]["failed"] == 1
    assert "test/acc" not in rows["optimizer.lr=-1"] and rows["optimizer.lr=0.002"]["failed"] == 0
    assert "| optimizer.lr=-1 | 0 | 1 |" in to_markdown(list(rows.values()))


# -- the cross-split duplicate count -----------------------------------------------------------------
def test_duplicate_count_per_split_pair() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (50, 4, 4, 1), np.uint8)
    val = np.concatenate([train[:3], rng.integers(0, 255, (7, 4, 4, 1), np.uint8)])
    test = np.concatenate([train[3:5], val[5:6], val[5:6], rng.integers(0, 255, (4, 4, 4, 1), np.uint8)])
    assert cross_split_duplicates({"train": train, "val": val, "test": test}) == {
        "val_in_train": 3, "test_in_train": 2, "test_in_val": 2}


# -- smaller defects ---------------------------------------------------------------------------------
def _fetch(folder: str, url: str, md5: str, barrier: mp.Barrier) -> None:  # one DDP rank
    from medclass.data.locate import find_or_download

    barrier.wait()
    find_or_download("data.npz", [Path(folder)], url, md5)


class CountingHandler(SimpleHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.served.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def test_ranks_asking_at_once_download_once(tmp_path: Path) -> None:
    source = tmp_path / "server" / "data.npz"
    source.parent.mkdir()
    source.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    handler = functools.partial(CountingHandler, directory=str(source.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/data.npz"
    ctx = mp.get_context("fork")
    try:
        alone = ctx.Process(target=_fetch, args=(str(tmp_path / "alone"), url, md5, ctx.Barrier(1)))
        alone.start()
        alone.join(60)
        one_download = len(CountingHandler.served)  # torchvision may ask more than once per download
        CountingHandler.served.clear()
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_fetch, args=(str(tmp_path / "cache"), url, md5, barrier)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    finally:
        server.shutdown()
    assert alone.exitcode == 0 and [p.exitcode for p in procs] == [0, 0]
    assert len(CountingHandler.served) == one_download  # one rank downloaded; the other waited and found it
    assert hashlib.md5((tmp_path / "cache" / "data.npz").read_bytes()).hexdigest() == md5


def _first_batch(rank: int) -> torch.Tensor:
    images = np.random.default_rng(0).integers(0, 255, (16, 24, 24, 1), np.uint8)
    tf = train_transform(image_size=None, mean=[0.5], std=[0.25], symmetry="invariant")
    loader = DataLoader(ArrayDataset(images, np.zeros(16, np.int64), tf), batch_size=16, num_workers=1,
                        worker_init_fn=functools.partial(init_worker, rank=rank))
    torch.manual_seed(3)  # every DDP rank is seeded alike by seed_everything
    return next(iter(loader))[0]


def test_ddp_ranks_draw_their_own_augmentations() -> None:
    assert torch.equal(_first_batch(0), _first_batch(0))  # reproducible per rank ...
    assert not torch.equal(_first_batch(0), _first_batch(1))  # ... and distinct across ranks


def test_train_false_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MedclassError, match="train=false tests a trained model: add ckpt_path="):
        train(compose_train(["train=false", *FAST], tmp_path))


def test_callbacks_none_writes_no_checkpoint(blood_root: Path, tmp_path: Path) -> None:
    metrics = train(compose_train([f"data.root={blood_root}", "callbacks=none", *FAST], tmp_path))
    assert list(tmp_path.rglob("*.ckpt")) == [] and "test/acc" in metrics["test"]


def test_label_smoothing_applies_to_multi_label_tasks() -> None:
    logits, target = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    smooth = target * 0.8 + 0.1
    by_hand = -(smooth * torch.log(torch.sigmoid(logits)) + (1 - smooth) * torch.log(1 - torch.sigmoid(logits)))
    assert make_loss("multi-label", 0.2)(logits, target).item() == pytest.approx(by_hand.mean().item(), rel=1e-6)
    with pytest.raises(MedclassError, match="label_smoothing=1.5"):
        make_loss("multi-class", 1.5)


def test_dependency_floors_cover_the_apis_used() -> None:
    """EMAWeightAveraging (medclass.callbacks.EMA) and fit(weights_only=...) arrived in Lightning 2.6."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {Requirement(d).name: Requirement(d).specifier
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert Version("2.5.9") not in deps["lightning"] and Version("2.6.0") in deps["lightning"]
    assert "filelock" in deps  # imported by medclass.data.locate


OLD_MAIN = ROOT / "tests" / "data" / "main-19f83ad.ckpt"  # written by main before the registries (about: .json)


@pytest.mark.parametrize("module_name", ["medclass.model.", "medclass.models."])
def test_checkpoints_of_earlier_mains_load_through_the_registry(tmp_path: Path, module_name: str) -> None:
    """Their `net` and `data_cfg` carry `_target_`s (`medclass.models.*` before the layout followed conf/model):
    medclass's own are mapped onto registry names, with the same network and weights."""
    ckpt = torch.load(OLD_MAIN, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["_target_"] == "medclass.model.SimpleCNN"
    ckpt["hyper_parameters"]["net"]["_target_"] = module_name + "SimpleCNN"
    torch.save(ckpt, tmp_path / "old.ckpt")
    hparams = read_hparams(tmp_path / "old.ckpt")
    assert hparams["net"] == {"arch": "cnn", "widths": [4, 8], "convs_per_block": 2, "block_dropout": 0.0,
                              "hidden": 8, "dropout": 0.3}
    assert hparams["data_cfg"]["kind"] == "medmnist" and "augment" not in hparams["data_cfg"]
    loaded = load_classifier(tmp_path / "old.ckpt").eval()
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    from medclass.model import SimpleCNN

    reference = SimpleCNN(3, 8, widths=[4, 8], hidden=8).eval()
    reference.load_state_dict(state)
    torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=1e-6)  # channels_last: not bit-equal


def test_a_checkpoint_of_the_previous_main_evaluates_to_the_same_metrics(tmp_path: Path) -> None:
    """eval.py on the committed checkpoint of main 19f83ad gives what that main's eval.py gave (its .json)."""
    expected = json.loads(OLD_MAIN.with_suffix(".json").read_text())
    data = write_npz(tmp_path / "medmnist", "bloodmnist", channels=3, classes=8, n=(64, 48, 48)).parent
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(OLD_MAIN.read_bytes())
    cfg = compose_train([f"ckpt_path={ckpt}", f"data.root={data}", "bootstrap=200"], tmp_path / "eval",
                        config_name="eval")
    assert evaluate(cfg)["test"] == expected["test"]
    operating = json.loads((tmp_path / "old.operating.json").read_text())
    assert operating["temperature"] == pytest.approx(expected["temperature"])
