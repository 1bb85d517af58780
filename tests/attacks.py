"""Hostile model files, made from a real checkpoint the way a stranger would edit one (issue 25).

Each builder takes a loaded checkpoint (a dict from `torch.load`) and a folder, and returns an
`Attack`: the file to hand to eval.py / predict.py / export.py, the victim files that must survive,
what the one error line must say, and a `live` proof that the payload does what it threatens when
something does resolve or trust it. tests/test_checkpoint_attacks.py runs them in-process and on the
command line; tools/attack_check.py runs every attack through every command and prints a table.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SECRET_ENV, SECRET = "MEDCLASS_ATTACK_SECRET", "hunter2-secret-value"


@dataclass
class Attack:
    name: str
    ckpt: Path
    expect: str  # regular expression the `error:` line must match
    victims: list[Path] = field(default_factory=list)  # each holds "precious" and must keep it
    forbidden: list[Path] = field(default_factory=list)  # must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)
    secret: str | None = None  # must not appear in the command's output
    live: Callable[[], bool] = lambda: True  # the payload, run directly, does harm
    refused_by: tuple[str, ...] = ("eval", "predict", "export")  # the others never read the part attacked


def _victim(folder: Path, name: str = "victim.txt") -> Path:
    path = folder / name
    path.write_text("precious")
    return path


def _raises(action: Callable[[], Any], error: type[BaseException]) -> bool:
    """Whether `action` fails with `error`: the harm a payload does when nothing stops it first."""
    try:
        action()
    except error:
        return True
    return False


def _save(ckpt: dict[str, Any], path: Path) -> Path:
    torch.save(ckpt, path)
    return path


def _unlink_payload(victim: Path) -> str:
    return "${oc.create:{_target_: pathlib.Path.unlink, _args_: ['" + str(victim) + "']}}"


def _instantiate_deletes(payload: str, folder: Path) -> bool:
    """What the loader used to do with `net` or `data_cfg`: hydra.utils.instantiate on a config holding the string
    (run on a second victim)."""
    from hydra.utils import instantiate

    spare = _victim(folder, "spare.txt")
    try:
        instantiate({"root": payload.replace(str(folder / "victim.txt"), str(spare))})
    except Exception:
        pass  # it deletes the file, then fails to use the result
    return not spare.exists()


def interpolation_in_net(base: dict[str, Any], folder: Path) -> Attack:
    ckpt, victim = copy.deepcopy(base), _victim(folder)
    ckpt["hyper_parameters"]["net"]["dropout"] = _unlink_payload(victim)
    return Attack("interpolation in net", _save(ckpt, folder / "model.ckpt"), r"net\.dropout=.*interpolation",
                  [victim], live=lambda: _instantiate_deletes(_unlink_payload(victim), folder))


def interpolation_in_data(base: dict[str, Any], folder: Path) -> Attack:
    ckpt, victim = copy.deepcopy(base), _victim(folder)
    ckpt["hyper_parameters"]["data_cfg"]["root"] = _unlink_payload(victim)
    return Attack("interpolation in data_cfg", _save(ckpt, folder / "model.ckpt"),
                  r"data_cfg\.root=.*interpolation", [victim],
                  live=lambda: _instantiate_deletes(_unlink_payload(victim), folder))


def legacy_keys(base: dict[str, Any], folder: Path) -> Attack:
    ckpt, victim = copy.deepcopy(base), _victim(folder)
    payload = {"_target_": "pathlib.Path.unlink", "_args_": [str(victim)]}
    ckpt["hparams"] = {"data_cfg": payload}  # moved out of hyper_parameters, which Lightning would let win
    ckpt["module_arguments"] = {"data_cfg": payload}
    del ckpt["hyper_parameters"]["data_cfg"]

    def live() -> bool:
        """Lightning's loader makes `hparams` constructor arguments, and earlier mains' eval.py instantiated the
        module's data_cfg: that chain, on a module that records its arguments as the Classifier did."""
        import lightning as L
        from hydra.utils import instantiate
        from lightning.pytorch.core.saving import _load_state

        class Recorder(L.LightningModule):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__()
                self.save_hyperparameters()

        spare = _victim(folder, "spare.txt")
        spare_payload = {"data_cfg": {**payload, "_args_": [str(spare)]}}
        bad = {**copy.deepcopy(ckpt), "hparams": spare_payload, "module_arguments": spare_payload}
        module = _load_state(Recorder, bad, strict=False)
        try:
            instantiate(module.hparams["data_cfg"])
        except Exception:
            pass
        return not spare.exists()

    return Attack("legacy top-level keys", _save(ckpt, folder / "model.ckpt"),
                  r"top-level keys medclass does not write \(hparams, module_arguments\)", [victim], live=live)


def symlinked_operating_file(base: dict[str, Any], folder: Path) -> Attack:
    victim = _victim(folder, "bashrc")
    ckpt = _save(copy.deepcopy(base), folder / "model.ckpt")
    (folder / "model.operating.json").symlink_to(victim)

    def live() -> bool:  # a plain write to the name lands in the link's target
        spare = _victim(folder, "spare.txt")
        link = folder / "spare-link.json"
        link.symlink_to(spare)
        link.write_text("{}")
        return spare.read_text() == "{}"

    return Attack("symlinked operating file", ckpt, r"model\.operating\.json is a symbolic link", [victim], live=live)


def dotdot_name(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_cfg"]["name"] = "../../escaped"

    def live() -> bool:  # the split and cache files are named after it, below the run's splits/ folder
        return not (folder / "run" / "splits" / "../../escaped-key.csv").resolve().is_relative_to(folder / "run")

    return Attack("'../' in the data name", _save(ckpt, folder / "model.ckpt"),
                  r"data_cfg\.name='\.\./\.\./escaped': expected a plain name", [],
                  forbidden=[folder / "escaped_skipped.csv"], live=live)


def bomb(levels: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"a0": "x"}
    for i in range(1, levels):
        tree[f"a{i}"] = [f"${{a{i - 1}}}", f"${{a{i - 1}}}"]
    return tree


def interpolation_bomb(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_cfg"]["class_map"] = bomb(30)

    def live() -> bool:  # every level doubles what resolving yields: 2**29 strings at 30 levels
        from omegaconf import OmegaConf

        def leaves(x: Any) -> int:
            return sum(map(leaves, x)) if isinstance(x, list) else 1

        resolved = OmegaConf.to_container(OmegaConf.create(bomb(12)), resolve=True)
        return leaves(resolved["a11"]) == 2**11

    return Attack("interpolation bomb", _save(ckpt, folder / "model.ckpt"),
                  r"data_cfg\.class_map\.a\d+\[\d\]=.*interpolation", [], live=live)


def environment_secret(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_cfg"]["root"] = "${oc.env:" + SECRET_ENV + "}"

    def live() -> bool:
        from omegaconf import OmegaConf

        os.environ[SECRET_ENV] = SECRET
        try:
            return OmegaConf.create({"root": "${oc.env:" + SECRET_ENV + "}"}).root == SECRET
        finally:
            del os.environ[SECRET_ENV]

    return Attack("environment variable in a value", _save(ckpt, folder / "model.ckpt"),
                  r"data_cfg\.root=.*interpolation", [], env={SECRET_ENV: SECRET}, secret=SECRET, live=live)


def oversized_image(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_info"]["image_size"] = 30000
    chans = ckpt["hyper_parameters"]["data_info"]["in_chans"]
    return Attack("image_size=30000", _save(ckpt, folder / "model.ckpt"),
                  r"data_info\.image_size=30000: expected a whole number from 1 to 2048", [],
                  live=lambda: 30000 * 30000 * max(chans, 1) * 4 > 3.5e9)  # one float image, in bytes


def nan_threshold(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = _save(copy.deepcopy(base), folder / "model.ckpt")
    (folder / "model.operating.json").write_text(
        '{"checkpoint": "model.ckpt", "fitted_on": "val", "split_key": "", "temperature": 1.0, '
        '"thresholds": {"youden": NaN}}')

    def live() -> bool:  # Python's json reads it, and no score is ever >= NaN: the decision never changes
        threshold = json.loads((folder / "model.operating.json").read_text())["thresholds"]["youden"]
        return math.isnan(threshold) and not any(score >= threshold for score in (0.0, 0.5, 1.0))

    return Attack("NaN threshold in operating.json", ckpt, r"model\.operating\.json: thresholds\.youden=nan", [],
                  live=live)


def backtracking_regex(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_cfg"]["group_by"] = "(.?){999}#"

    def live() -> bool:  # a smaller one already runs past a time limit (which is also medclass's backstop)
        import re

        from medclass.utils.errors import MedclassError
        from medclass.utils.limits import time_limit

        def search() -> None:
            with time_limit(0.5, "too slow"):
                re.search(r"(.?){999}#", "a" * 40)

        return _raises(search, MedclassError)

    return Attack("backtracking group_by regex", _save(ckpt, folder / "model.ckpt"),
                  r"data_cfg\.group_by=.*without a repeated group", [], live=live)


def non_string_weight_key(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["state_dict"][0] = torch.zeros(1)

    def live() -> bool:  # torch's own loader fails with a traceback, not a line
        return _raises(lambda: torch.nn.Linear(1, 1).load_state_dict({0: torch.zeros(1)}, strict=False),
                       AttributeError)

    return Attack("non-string key in state_dict", _save(ckpt, folder / "model.ckpt"),
                  r"state_dict entry 0 is not a named tensor", [], live=live)


def huge_network(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["net"].update(widths=[4096] * 8, convs_per_block=8, hidden=65536)

    def live() -> bool:  # built for real, it would take this many bytes of parameters alone
        from medclass.model.cnn import SimpleCNN

        with torch.device("meta"):
            net = SimpleCNN(1, 2, widths=[4096] * 8, convs_per_block=8, hidden=65536)
        return sum(p.numel() for p in net.parameters()) * 4 > 20e9

    return Attack("a network far larger than its weights", _save(ckpt, folder / "model.ckpt"),
                  r"its weights do not fit the network it describes", [], live=live)


def medmnist_download(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    evil = folder / "victim_dir" / "evil"
    ckpt["hyper_parameters"]["data_cfg"] = {"kind": "medmnist", "name": "pathmnist", "size": 224, "root": str(evil),
                                            "download": True, "batch_size": 32}

    def live() -> bool:  # with download on, the loader makes the folder the file names (before failing offline)
        from medclass.data.locate import find_or_download
        from medclass.utils.errors import MedclassError

        spare = folder / "spare_dir" / "evil"
        try:
            find_or_download("x.npz", [spare], url="http://127.0.0.1:9/x.npz", download=True)
        except MedclassError:
            pass
        return spare.is_dir()

    return Attack("a MedMNIST download into a folder the file names", _save(ckpt, folder / "model.ckpt"),
                  # an edited description carries no valid seal: its paths are not read at all (medclass.untrusted.seal)
                  r"root=.*victim_dir/evil\) but was not written by medclass under this account", [],
                  forbidden=[folder / "victim_dir"],
                  live=live, refused_by=("eval",))


def tiny_temperature(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = _save(copy.deepcopy(base), folder / "model.ckpt")
    (folder / "model.operating.json").write_text('{"temperature": 5e-324}')

    def live() -> bool:  # every probability becomes NaN, with exit code 0
        import numpy as np

        from medclass.eval.calibration import apply_temperature

        return bool(np.isnan(apply_temperature(np.array([[0.3, 0.7]]), "binary-class", 5e-324)).all())

    return Attack("a temperature of 5e-324", ckpt, r"temperature=5e-324: expected a finite number in \[0\.01, 100\]",
                  [], live=live)


def nan_weights(base: dict[str, Any], folder: Path) -> Attack:
    ckpt = copy.deepcopy(base)
    first = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
    ckpt["state_dict"][first] = torch.full_like(ckpt["state_dict"][first], float("nan"))

    def live() -> bool:  # the network's every output is NaN
        conv = torch.nn.Conv2d(1, 1, 3)
        conv.weight.data.fill_(float("nan"))
        return bool(torch.isnan(conv(torch.zeros(1, 1, 8, 8))).all())

    return Attack("NaN weights", _save(ckpt, folder / "model.ckpt"), rf"weight {re.escape(first)} holds NaN", [],
                  live=live)


def huge_activations(base: dict[str, Any], folder: Path) -> Attack:
    """Weights that do fit (a 4096-channel first block is 150 KB of parameters) but 2048 px images through it."""
    from medclass.model.cnn import SimpleCNN

    ckpt = copy.deepcopy(base)
    hp = ckpt["hyper_parameters"]
    chans, classes = hp["data_info"]["in_chans"], len(hp["data_info"]["class_names"])
    hp["net"].update(widths=[4096], convs_per_block=1, hidden=0)
    hp["data_info"]["image_size"] = 2048
    net = SimpleCNN(chans, classes, widths=[4096], convs_per_block=1, hidden=0)
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}

    def live() -> bool:  # its first layer's output alone, for one image
        return 4096 * 2048 * 2048 * 4 > 60e9

    return Attack("activations of 64 GB an image", _save(ckpt, folder / "model.ckpt"),
                  r"one 2048 px image would need a 64\.0 GB activation", [], live=live)


ATTACKS: dict[str, Callable[[dict[str, Any], Path], Attack]] = {
    "interpolation_in_net": interpolation_in_net,
    "interpolation_in_data": interpolation_in_data,
    "legacy_keys": legacy_keys,
    "symlinked_operating_file": symlinked_operating_file,
    "dotdot_name": dotdot_name,
    "interpolation_bomb": interpolation_bomb,
    "environment_secret": environment_secret,
    "oversized_image": oversized_image,
    "nan_threshold": nan_threshold,
    "backtracking_regex": backtracking_regex,
    "non_string_weight_key": non_string_weight_key,
    "huge_network": huge_network,
    "medmnist_download": medmnist_download,
    "tiny_temperature": tiny_temperature,
    "nan_weights": nan_weights,
    "huge_activations": huge_activations,
}
