"""Optional parts of medclass (`pip install "medclass[onnx]"`, ...): one clear line when one is missing.

The core install trains, evaluates and predicts; ONNX export, DICOM files, Grad-CAM, Optuna and SLURM
sweeps, MLflow, W&B and streamed data sets (LitData) need their extra. `pip install "medclass[all]"` installs every one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from types import ModuleType

from medclass.utils.errors import MedclassError

# config group choices that need an extra: (group, choice or None for any) -> (module, extra)
CHOICES = {
    ("logger", "mlflow"): ("mlflow", "mlflow"),
    ("logger", "wandb"): ("wandb", "wandb"),
    ("hparams_search", None): ("hydra_plugins.hydra_optuna_sweeper", "search"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "search"),
    ("data", "stream"): ("litdata", "stream"),
}


class MissingExtra(MedclassError):
    """An optional package is not installed; never swallowed as a per-file problem."""


def message(what: str, module: str, extra: str) -> str:
    return (f"{what} needs {module.split('.')[-1] if module.startswith('hydra_plugins') else module}, an optional "
            f'part of medclass: pip install "medclass[{extra}]"')


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or stop with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(message(what, module, extra)) from err


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (wandb alone takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # its parent package is missing
        return False


def missing_for_choices(choices: Iterable[tuple[str, list[str]]]) -> str | None:
    """The message for the first (group, options) choice whose extra is not installed, checked before Hydra
    starts (whose own message would be a plugin-not-found trace); `utils.cli.group_choices` reads them."""
    for group, values in choices:
        for value in values:
            need = CHOICES.get((group, value)) or CHOICES.get((group, None))
            if need and value not in ("null", "none") and not installed(need[0]):
                return message(f"{group}={value}", *need)
    return None
