"""A model file's numbers, names and training state from a stranger (issue 35, items 3, 4 and 6).

The builders below turn a real checkpoint into the attacks of issue 35 ("Why"): weights that are finite
but overflow, the wrong dtypes, a negative BatchNorm variance, a tensor the network does not use (2.4 GB,
sparse on disk), a dict where the network's name belongs, and a resume whose callback state names a
victim folder for Lightning to delete. `MODEL_FILE_ATTACKS` collects them for tools and the lead's table;
each returns an `Attack` (tests/attacks.py) with the file to pass, the victims and the error it must give.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from .attacks import Attack
from .conftest import FAST, ROOT, compose_train, run_script, write_npz

EXTRA_BYTES = 2_400_000_000  # the extra tensor: 2.4 GB of float32 zeros, a hole on disk


# -- builders ------------------------------------------------------------------------------------------
def _save(ckpt: dict[str, Any], path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def _head(state: dict[str, torch.Tensor]) -> str:
    """The last 2-D weight: the classifier head."""
    return [k for k, v in state.items() if v.is_floating_point() and v.ndim == 2][-1]


def _first_conv(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)


def _edited(base: dict[str, Any], edit: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, Any]:
    ckpt = copy.deepcopy(base)
    edit(ckpt["state_dict"])
    return ckpt


def _trusted_outputs(path: Path) -> torch.Tensor:
    """What the weights give when loaded the way torch allows (strict names, any dtype torch will copy): the
    probabilities for a blank and a random image. The harm a file does when nothing checks its numbers."""
    from medclass.module.checkpoint import build_classifier
    from medclass.module.hparams import validate
    from medclass.module.task_kinds import probabilities

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    module = build_classifier(validate(ckpt["hyper_parameters"], "x"))
    module.load_state_dict(ckpt["state_dict"], strict=True)
    info = module.hparams.data_info
    x = torch.cat([torch.zeros(1, info["in_chans"], info["image_size"], info["image_size"]),
                   torch.randn(1, info["in_chans"], info["image_size"], info["image_size"])])
    with torch.inference_mode():
        return probabilities(module.eval()(x), info["task"])


def _gives_nan(path: Path) -> Callable[[], bool]:
    return lambda: not bool(torch.isfinite(_trusted_outputs(path)).all())


def _loads_silently(path: Path) -> Callable[[], bool]:
    """torch copies it into the float32 network without a word (the imaginary part or the fraction dropped)."""
    def live() -> bool:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(torch.isfinite(_trusted_outputs(path)).all())
    return live


def overflowing_head(base: dict[str, Any], folder: Path) -> Attack:
    """Finite weights (3e38, just under float32's largest) in the head: every logit overflows to ±inf, so
    softmax gives NaN (the file passes any finiteness check of its own numbers)."""
    def edit(state: dict[str, torch.Tensor]) -> None:
        head = _head(state)
        state[head] = torch.full_like(state[head], 3e38) * torch.tensor([1.0, -1.0]).repeat(
            state[head].numel() // 2 + 1)[: state[head].numel()].view_as(state[head])

    path = _save(_edited(base, edit), folder / "model.ckpt")
    return Attack("finite weights that overflow (3e38 in the head)", path, r"give non-finite outputs on a probe image",
                  live=_gives_nan(path))


def float64_huge(base: dict[str, Any], folder: Path) -> Attack:
    """float64 weights of 1e300: finite in the file, infinite once cast to the network's float32."""
    def edit(state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            if value.is_floating_point():
                state[key] = value.double()
        state[_first_conv(state)] = torch.full_like(state[_first_conv(state)], 1e300)

    path = _save(_edited(base, edit), folder / "model.ckpt")
    return Attack("float64 weights of 1e300", path, r"not finite in the network's float32", live=_gives_nan(path))


def complex_weights(base: dict[str, Any], folder: Path) -> Attack:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = _first_conv(state)
        state[key] = torch.complex(state[key], torch.ones_like(state[key]))

    path = _save(_edited(base, edit), folder / "model.ckpt")
    return Attack("complex weights", path, r"complex64; expected real floating point", live=_loads_silently(path))


def int64_weights(base: dict[str, Any], folder: Path) -> Attack:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = _first_conv(state)
        state[key] = (state[key] * 100).long()

    path = _save(_edited(base, edit), folder / "model.ckpt")
    return Attack("int64 weights", path, r"int64; expected real floating point", live=_loads_silently(path))


def float8_weights(base: dict[str, Any], folder: Path) -> Attack:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = _first_conv(state)
        state[key] = state[key].to(torch.float8_e4m3fn)

    def live() -> bool:  # the earlier finiteness check raised NotImplementedError (a traceback) on it
        try:
            torch.isfinite(torch.zeros(1, dtype=torch.float8_e4m3fn))
        except NotImplementedError:
            return True
        return False

    return Attack("float8 weights", _save(_edited(base, edit), folder / "model.ckpt"),
                  r"float8_e4m3fn; expected real floating point", live=live)


def negative_variance(base: dict[str, Any], folder: Path) -> Attack:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = next(k for k in state if k.endswith("running_var"))
        state[key] = -torch.ones_like(state[key])

    path = _save(_edited(base, edit), folder / "model.ckpt")
    return Attack("a negative BatchNorm running variance", path, r"running_var holds a negative BatchNorm variance",
                  live=_gives_nan(path))


def write_sparse_checkpoint(ckpt: dict[str, Any], path: Path, name: str, nbytes: int) -> Path:
    """`ckpt` with one more float32 tensor of `nbytes` zeros under `name`: torch.save writes the zeros (read from
    a sparse file, so they cost no memory) and `fallocate --dig-holes` turns them back into a hole, so the file is
    `nbytes` long but takes a few MB of disk, as a stranger would ship it (gzipped, it is a few MB)."""
    zeros = path.with_name(path.name + ".zeros")
    with open(zeros, "wb") as f:
        f.truncate(nbytes)
    extra = torch.from_file(str(zeros), shared=False, size=nbytes // 4, dtype=torch.float32)
    try:
        torch.save({**ckpt, "state_dict": {**ckpt["state_dict"], name: extra}}, path)
    finally:
        del extra
        zeros.unlink()
    subprocess.run(["fallocate", "--dig-holes", str(path)], check=False)
    return path


def extra_tensor(base: dict[str, Any], folder: Path, nbytes: int = EXTRA_BYTES) -> Attack:
    """A tensor the network does not use (2.4 GB of zeros, a hole on disk): refused from the index, unread."""
    path = write_sparse_checkpoint(base, folder / "model.ckpt", "net.unused", nbytes)

    def live() -> bool:  # the file does hold it: reading every tensor (as the earlier check did) reads nbytes
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
        return state["net.unused"].numel() * 4 == nbytes - nbytes % 4

    return Attack(f"an extra {nbytes / 1e9:.1f} GB tensor (sparse on disk)", path,
                  r"holds a tensor the network it describes does not use \(net\.unused\); refusing it unread",
                  live=live)


def arch_as_dict(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["net"]["arch"] = {"a": 1}
    def live() -> bool:  # the registry's `name in ARCHITECTURES` on a dict
        try:
            return {"a": 1} in {}
        except TypeError:
            return True

    return Attack("a dict where the network's name belongs", _save(ckpt, folder / "model.ckpt"),
                  r"net\.arch=\{'a': 1\}: expected the name of a registered network", live=live)


def resume_deletes(base: dict[str, Any], folder: Path) -> Attack:
    """ModelCheckpoint state with no dirpath and paths `local:///<victim>`: Lightning adopts them, then removes
    "the previous last checkpoint" and "the k-th best" with fsspec's recursive rm (exit 0)."""
    ckpt = copy.deepcopy(base)
    victim_dir = folder / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "notes.txt").write_text("precious")
    second = folder / "victim.txt"
    second.write_text("precious")
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    state = ckpt["callbacks"][key]
    state.pop("dirpath", None)
    state.update(last_model_path=f"local://{victim_dir}", best_model_path=f"local://{second}",
                 kth_best_model_path=f"local://{second}", best_k_models={f"local://{second}": torch.tensor(-1.0)},
                 best_model_score=torch.tensor(-1.0), kth_value=torch.tensor(-1.0))
    def live() -> bool:
        """Lightning adopts the state (no dirpath: "unchanged") and calls these paths removable."""
        from types import SimpleNamespace

        from lightning.pytorch.callbacks import ModelCheckpoint

        callback = ModelCheckpoint(dirpath=folder / "run" / "checkpoints")
        callback.load_state_dict(state)
        trainer = SimpleNamespace(ckpt_path=None)
        return (callback.last_model_path == f"local://{victim_dir}"
                and callback._should_remove_checkpoint(trainer, callback.last_model_path, "x.ckpt")
                and callback._should_remove_checkpoint(trainer, callback.kth_best_model_path, "x.ckpt"))

    return Attack("resume: ModelCheckpoint state naming local:///<victim>", _save(ckpt, folder / "model.ckpt"),
                  r"", victims=[victim_dir / "notes.txt", second], refused_by=(), live=live)


def resume_foreign_callback(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["callbacks"]["StochasticWeightAveraging{'swa_lrs': 1}"] = {"n": 1}
    return Attack("resume: state of a callback medclass does not configure", _save(ckpt, folder / "model.ckpt"),
                  r"callbacks\[.*StochasticWeightAveraging.*not a callback medclass", refused_by=("train",))


def resume_bad_random_state(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["random_state"]["numpy"][0] = "NOT_A_GENERATOR"

    def live() -> bool:  # what medclass.callbacks.random_state.restore calls: a ValueError, a traceback
        import numpy as np

        try:
            np.random.set_state(("NOT_A_GENERATOR", np.zeros(624, np.uint32), 0, 0, 0.0))
        except ValueError:
            return True
        return False

    return Attack("resume: a random state numpy cannot take", _save(ckpt, folder / "model.ckpt"),
                  r"random_state\.numpy is not a generator state numpy can take", refused_by=("train",), live=live)


def resume_scheduler_attribute(base: dict[str, Any], folder: Path) -> Attack:
    """A scheduler state with a key its scheduler never writes: torch's `load_state_dict` is `__dict__.update`, so
    it would replace the scheduler's own `optimizer` attribute (a traceback mid-run, or worse)."""
    ckpt = copy.deepcopy(base)
    ckpt["lr_schedulers"][0]["optimizer"] = {"param_groups": []}
    return Attack("resume: a scheduler state that sets the scheduler's optimizer", _save(ckpt, folder / "model.ckpt"),
                  r"lr_schedulers\[0\] has keys this run's does not \(optimizer\)", refused_by=("train",))


def resume_optimizer_shapes(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    state = ckpt["optimizer_states"][0]["state"]
    state[0]["exp_avg"] = torch.zeros(3, 3)
    return Attack("resume: optimizer state of the wrong shape", _save(ckpt, folder / "model.ckpt"),
                  r"optimizer_states: exp_avg of parameter 0 has shape \[3, 3\]", refused_by=("train",))


def resume_loop_nan(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] = float("nan")
    return Attack("resume: NaN in the loop counters", _save(ckpt, folder / "model.ckpt"),
                  r"loops.*_batches_that_stepped.*NaN", refused_by=("train",))


def resume_weights_only(base: dict[str, Any], folder: Path) -> Attack:
    """A checkpoint saved with weights only: Lightning stopped with a KeyError after building everything."""
    ckpt = {k: v for k, v in base.items() if k in ("state_dict", "hyper_parameters", "epoch", "global_step",
                                                   "pytorch-lightning_version")}
    return Attack("resume: a weights-only checkpoint", _save(ckpt, folder / "model.ckpt"),
                  r"holds weights but no training state \(optimizer_states, lr_schedulers, loops\).*init_from=",
                  refused_by=("train",))


MODEL_FILE_ATTACKS: dict[str, Callable[[dict[str, Any], Path], Attack]] = {
    "overflowing_head": overflowing_head,
    "float64_huge": float64_huge,
    "complex_weights": complex_weights,
    "int64_weights": int64_weights,
    "float8_weights": float8_weights,
    "negative_variance": negative_variance,
    "arch_as_dict": arch_as_dict,
    "extra_tensor": extra_tensor,
}
RESUME_ATTACKS: dict[str, Callable[[dict[str, Any], Path], Attack]] = {
    "resume_deletes": resume_deletes,
    "resume_foreign_callback": resume_foreign_callback,
    "resume_bad_random_state": resume_bad_random_state,
    "resume_scheduler_attribute": resume_scheduler_attribute,
    "resume_optimizer_shapes": resume_optimizer_shapes,
    "resume_loop_nan": resume_loop_nan,
    "resume_weights_only": resume_weights_only,
}


# -- tests ---------------------------------------------------------------------------------------------------
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(scope="module")
def mid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch run on synthetic BloodMNIST that keeps every epoch's checkpoint, so best-epoch000.ckpt is a
    run stopped halfway: weights, optimizer, a one-cycle schedule, loops, callbacks and generators."""
    from medclass.tasks.train import train

    tmp = tmp_path_factory.mktemp("mid_run")
    root = write_npz(tmp / "medmnist", "bloodmnist", channels=3, classes=8, n=(64, 32, 32)).parent
    train(compose_train([f"data.root={root}", *FAST, "trainer.max_epochs=2",
                         "callbacks.model_checkpoint.save_top_k=-1", *QUIET], tmp / "run"))
    return tmp / "run"


@pytest.fixture(scope="module")
def base(mid_run: Path) -> dict[str, Any]:
    return torch.load(mid_run / "checkpoints" / "best-epoch000.ckpt", map_location="cpu", weights_only=True)


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", [n for n in MODEL_FILE_ATTACKS if n != "extra_tensor"])
def test_weights_that_cannot_give_numbers_are_refused_in_one_line(base: dict[str, Any], tmp_path: Path,
                                                                  name: str) -> None:
    from medclass.module.checkpoint import load_classifier
    from medclass.utils.errors import MedclassError

    attack = MODEL_FILE_ATTACKS[name](base, tmp_path)
    assert attack.live(), f"{name}: the payload does no harm when trusted; the test proves nothing"
    with pytest.raises(MedclassError) as raised:
        load_classifier(attack.ckpt)
    assert re.search(attack.expect, one_line(raised.value)), raised.value


@pytest.mark.slow  # the reader refuses each kind above; tests/test_untrusted_predict.py runs one on the command line
def test_the_command_line_refuses_non_finite_weights_before_writing_predictions(base: dict[str, Any],
                                                                                 tmp_path: Path) -> None:
    """The issue's run: predict.py on weights that overflow wrote `nan` probabilities and exited 0."""
    from .conftest import grey, save

    attack = overflowing_head(base, tmp_path)
    save(tmp_path / "images" / "a.png", grey(90, size=28))
    proc = run_script("predict.py", f"ckpt_path={attack.ckpt}", f"inputs={tmp_path / 'images'}", "progress=false",
                      f"hydra.run.dir={tmp_path / 'run'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and re.search(attack.expect, errors[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "predictions.csv").exists()


def test_a_tensor_the_network_does_not_use_is_refused_unread(base: dict[str, Any], tmp_path: Path) -> None:
    """512 MB of zeros (a hole on disk) beside the real weights: refused from the archive's index, and the process
    does not grow by the tensor's size (the earlier check read every tensor: 7.3 GB for the issue's 2.4 GB)."""
    nbytes = 512 * 2**20
    attack = extra_tensor(base, tmp_path, nbytes)
    assert attack.live()
    script = ("import resource, sys\n"
              "from medclass.module.checkpoint import load_classifier\n"
              "from medclass.utils.errors import MedclassError\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    load_classifier(sys.argv[1])\nexcept MedclassError as err:\n    print('error:', err)\n"
              "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(attack.ckpt)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert re.search(attack.expect, lines.get("error:", "")), proc.stdout + proc.stderr[-2000:]
    assert int(lines["grew_kb"]) * 1024 < nbytes / 4, proc.stdout


def export(base: dict[str, Any], folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A safetensors export (medclass-export's writer) of `base`, its tensors then edited as a stranger would."""
    from safetensors.torch import load_file, save_file

    from medclass.module.checkpoint import load_classifier
    from medclass.tasks.export import export_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    _save(base, folder / "base.ckpt")
    path = export_safetensors(load_classifier(folder / "base.ckpt"), folder / "model.safetensors", {}, None,
                              source="base.ckpt")
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "medclass-model"})
    return path


def _extra(state: dict[str, torch.Tensor]) -> None:
    state["net.unused"] = torch.zeros(1000)


def _float8(state: dict[str, torch.Tensor]) -> None:
    state[_first_conv(state)] = state[_first_conv(state)].to(torch.float8_e4m3fn)


def _overflow(state: dict[str, torch.Tensor]) -> None:
    state[_head(state)] = torch.full_like(state[_head(state)], 3e38)
    state[_head(state)][::2] *= -1


def _huge64(state: dict[str, torch.Tensor]) -> None:
    state[_first_conv(state)] = torch.full_like(state[_first_conv(state)], 1e300, dtype=torch.float64)


@pytest.mark.parametrize(("edit", "message"), [
    (_extra, r"holds a tensor the network it describes does not use \(net\.unused\); refusing it unread"),
    (_float8, r"is float8_e4m3fn; expected real floating point"),
    (_overflow, r"give non-finite outputs on a probe image"),
    (_huge64, r"not finite in the network's float32")])
def test_a_safetensors_export_is_held_to_the_same_rules(base: dict[str, Any], tmp_path: Path,
                                                        edit: Callable[[dict[str, torch.Tensor]], None],
                                                        message: str) -> None:
    from medclass.module.checkpoint import load_classifier
    from medclass.utils.errors import MedclassError

    path = export(base, tmp_path, lambda state: None)
    assert load_classifier(path) is not None  # the untouched export loads
    path = export(base, tmp_path / "edited", edit)
    with pytest.raises(MedclassError) as raised:
        load_classifier(path)
    assert re.search(message, one_line(raised.value)), raised.value


def resume_args(mid_run: Path, ckpt: Path | str) -> list[str]:
    return [f"data.root={mid_run.parent / 'medmnist'}", f"ckpt_path={ckpt}", *FAST, "trainer.max_epochs=2", *QUIET]


def test_resuming_never_lets_lightning_delete_outside_the_run(base: dict[str, Any], mid_run: Path,
                                                              tmp_path: Path) -> None:
    """The issue's run: ModelCheckpoint state with `local:///<victim>` paths. Lightning would adopt them and remove
    the victims with fsspec's recursive rm (exit 0); the run resumes with its record of best checkpoints rebuilt,
    and Lightning reads only the checked copy, which is gone afterwards."""
    attack = resume_deletes(base, tmp_path)
    assert attack.live()
    run = tmp_path / "run"
    proc = run_script("train.py", *resume_args(mid_run, attack.ckpt), f"hydra.run.dir={run}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for victim in attack.victims:
        assert victim.read_text() == "precious"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "resume").exists()
    assert "record of best checkpoints starts afresh" in proc.stdout + proc.stderr
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    paths = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert all(str(p).startswith(str(run / "checkpoints")) for p in (paths["last_model_path"],
                                                                       *paths["best_k_models"]))


@pytest.mark.parametrize("name", [n for n in RESUME_ATTACKS if n != "resume_deletes"])
def test_resume_state_lightning_did_not_write_is_refused_in_one_line(base: dict[str, Any], mid_run: Path,
                                                                     tmp_path: Path, name: str) -> None:
    from medclass.tasks.train import train
    from medclass.utils.errors import MedclassError

    attack = RESUME_ATTACKS[name](base, tmp_path)
    assert attack.live()
    with pytest.raises(MedclassError) as raised:
        train(compose_train(resume_args(mid_run, attack.ckpt), tmp_path / "run"))
    assert re.search(attack.expect, one_line(raised.value)), raised.value
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "resume").exists()


def test_a_run_of_ours_resumes_from_a_checked_copy(mid_run: Path, tmp_path: Path) -> None:
    """The legitimate case: a run's own checkpoint after epoch 0, in its own folder (copied here, its paths moved
    with it), continues to epoch 2 with its record of best checkpoints kept, and the file it resumed from stays."""
    import shutil

    from medclass.tasks.train import train

    run = tmp_path / "run"
    shutil.copytree(mid_run / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / "best-epoch001.ckpt").unlink()
    start = run / "checkpoints" / "best-epoch000.ckpt"
    ckpt = torch.load(start, map_location="cpu", weights_only=True)
    key = next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))
    moved = str(mid_run), str(run)
    ckpt["callbacks"][key] = {k: (v.replace(*moved) if isinstance(v, str) else v)
                              for k, v in ckpt["callbacks"][key].items()}
    ckpt["callbacks"][key]["best_k_models"] = {p.replace(*moved): v
                                               for p, v in ckpt["callbacks"][key]["best_k_models"].items()}
    torch.save(ckpt, start)
    metrics = train(compose_train(resume_args(mid_run, start), run))
    assert metrics["run"]["epochs"] == 2 and metrics["run"]["steps"] == 2 * ckpt["global_step"]
    assert not (run / "resume").exists() and start.is_file()  # the copy is gone; the file resumed from is kept
    assert str(metrics["run"]["best_checkpoint"]).startswith(str(run / "checkpoints"))


def test_the_resume_copy_holds_only_the_numbers_it_needs(base: dict[str, Any], tmp_path: Path) -> None:
    """An optimizer state tensor of the right shape that views a 512 MB storage (a hole on disk): torch.save writes
    whole storages, so copying it as it is would write (and read) 512 MB; the copy holds the view's numbers."""
    from medclass.module.checkpoint import build_classifier
    from medclass.module.hparams import validate
    from medclass.tasks.resume import check_resume

    nbytes = 512 * 2**20
    zeros = tmp_path / "zeros"
    with open(zeros, "wb") as f:
        f.truncate(nbytes)
    big = torch.from_file(str(zeros), shared=False, size=nbytes // 4, dtype=torch.float32)
    ckpt = copy.deepcopy(base)
    first = ckpt["optimizer_states"][0]["state"][0]["exp_avg"]
    ckpt["optimizer_states"][0]["state"][0]["exp_avg"] = big[: first.numel()].view_as(first)
    torch.save(ckpt, tmp_path / "model.ckpt")
    del big
    zeros.unlink()
    subprocess.run(["fallocate", "--dig-holes", str(tmp_path / "model.ckpt")], check=False)
    assert os.path.getsize(tmp_path / "model.ckpt") > nbytes  # the storage is in the file
    module = build_classifier(validate(base["hyper_parameters"], "x"))
    module.read_from_file = False
    written, _ = check_resume(tmp_path / "model.ckpt").prepare(module, [], tmp_path / "resume")
    assert os.path.getsize(written) < nbytes / 16
    saved = torch.load(written, map_location="cpu", weights_only=True)["optimizer_states"][0]["state"][0]["exp_avg"]
    assert saved.shape == first.shape and not bool(saved.any())


def test_resuming_a_one_cycle_run_for_more_epochs_is_one_line(base: dict[str, Any], mid_run: Path,
                                                              tmp_path: Path) -> None:
    """A schedule of 4 steps resumed into a 3-epoch run raised torch's ValueError mid-run ("Tried to step 5
    times"); now the lengths are compared before Lightning restores anything."""
    from medclass.tasks.train import train
    from medclass.utils.errors import MedclassError

    with pytest.raises(MedclassError, match=r"lr_schedulers\[0\]\.total_steps is 4 where this run's schedule has 6"):
        train(compose_train([*resume_args(mid_run, mid_run / "checkpoints" / "best-epoch000.ckpt"),
                             "trainer.max_epochs=3"], tmp_path / "run"))


def test_init_from_takes_anyones_weights_through_the_safe_reader(base: dict[str, Any], mid_run: Path,
                                                                 tmp_path: Path) -> None:
    from medclass.module.checkpoint import load_classifier
    from medclass.tasks.train import init_weights, train
    from medclass.utils.errors import MedclassError

    ckpt = mid_run / "checkpoints" / "last.ckpt"
    theirs = load_classifier(ckpt)
    from medclass.module.checkpoint import build_classifier

    mine = build_classifier(dict(theirs.hparams))
    assert not all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(),
                                                      strict=True))
    init_weights(mine, str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(),
                                                  strict=True))
    data = f"data.root={mid_run.parent / 'medmnist'}"
    metrics = train(compose_train([data, f"init_from={ckpt}", *FAST, *QUIET], tmp_path / "ok"))
    assert metrics["run"]["epochs"] == 1
    bad = overflowing_head(base, tmp_path)
    with pytest.raises(MedclassError, match="give non-finite outputs on a probe image"):
        train(compose_train([data, f"init_from={bad.ckpt}", *FAST, *QUIET], tmp_path / "bad"))
    with pytest.raises(MedclassError, match="init_from= starts a new training .* pass one of them"):
        train(compose_train([data, f"init_from={ckpt}", f"ckpt_path={ckpt}", *FAST, *QUIET], tmp_path / "both"))
    with pytest.raises(MedclassError, match=r"init_from=.*net\.head\.1\.bias is \[256\] in the file and \[64\] in "
                                            r"the configured network"):
        train(compose_train([data, f"init_from={ckpt}", "model.hidden=64", *FAST, *QUIET], tmp_path / "other"))


def test_an_operating_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    from medclass.module import operating_file
    from medclass.utils.errors import MedclassError

    os.mkfifo(tmp_path / "model.operating.json")  # a reader that opened it would wait for a writer for ever
    with pytest.raises(MedclassError, match="is not a regular file"):
        operating_file.load(tmp_path / "model.ckpt")


def _rezip(src: Path, dst: Path, deflate: str = "", extra: str = "") -> Path:
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if deflate and info.filename.endswith(deflate) else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)
        if extra:
            zout.writestr(extra, b"echo hi")
    return dst


def _nested(depth: int) -> list[Any]:
    tree: list[Any] = [0] * 10
    for _ in range(depth):
        tree = [tree, tree]  # one list referenced twice a level: 2**depth leaves from a few bytes of pickle
    return tree


@pytest.mark.parametrize("case", ["compressed_pickle", "extra_record", "fifo", "environ_link", "huge_header",
                                  "cycle", "shared_bomb", "sparse_weight"])
def test_a_file_torch_save_did_not_write_is_refused_from_its_index(base: dict[str, Any], mid_run: Path,
                                                                   tmp_path: Path, case: str) -> None:
    """Red team beyond the issue's list: archives and trees of other shapes, each one line in well under a second,
    nothing read or waited for."""
    import struct
    import time

    from medclass.module.checkpoint import load_classifier
    from medclass.tasks.resume import check_resume
    from medclass.utils.errors import MedclassError

    source = mid_run / "checkpoints" / "best-epoch000.ckpt"
    path, reader, message = tmp_path / "model.ckpt", load_classifier, ""
    if case == "compressed_pickle":
        _rezip(source, path, deflate="data.pkl")
        message = r"record archive/data\.pkl is compressed"
    elif case == "extra_record":
        _rezip(source, path, extra="archive/run.sh")
        message = r"holds a record torch\.save does not write \(archive/run\.sh\)"
    elif case == "fifo":
        os.mkfifo(path)
        message = "is not a regular file"
    elif case == "environ_link":
        path.symlink_to("/proc/self/environ")
        message = "is not a regular file"
    elif case == "huge_header":
        path = tmp_path / "model.safetensors"
        path.write_bytes(struct.pack("<Q", 10**10) + b"{}")
        (tmp_path / "model.json").write_text(json.dumps({"format": "medclass-model", "version": 1,
                                                          "hyper_parameters": base["hyper_parameters"]}))
        message = "does not start with a safetensors header of at most 32 MiB"
    elif case in ("cycle", "shared_bomb"):
        ckpt = copy.deepcopy(base)
        loop: list[Any] = []
        loop.append(loop)
        ckpt["lr_schedulers"][0]["_last_lr"] = loop if case == "cycle" else _nested(40)
        _save(ckpt, path)
        reader, message = check_resume, r"lr_schedulers\[0\]\._last_lr.*nested deeper than 32 levels"
    else:
        ckpt = copy.deepcopy(base)
        key = _first_conv(ckpt["state_dict"])
        ckpt["state_dict"][key] = ckpt["state_dict"][key].to_sparse()
        _save(ckpt, path)
        message = r"is a torch\.sparse_coo tensor; expected a plain dense one"
    start = time.perf_counter()
    with pytest.raises(MedclassError) as raised:
        reader(path)
    assert re.search(message, one_line(raised.value)), raised.value
    assert "PATH=" not in str(raised.value) and time.perf_counter() - start < 5  # nothing of environ shown
