"""MedMNIST metadata: task, classes and channels from the `medmnist` package, plus image symmetry.

Symmetry says which flips and turns keep a label true, so augmentation defaults stay safe:
- ``invariant``: cells and tissue patches have no up, down, left or right (flips and 90° turns).
- ``mirror``: a left-right mirror keeps the label (ultrasound, OCT, fundus) but up is up.
- ``sided``: the label itself has a side or the anatomy an orientation (organ left/right, chest).
"""

from __future__ import annotations

from dataclasses import dataclass

from medmnist import INFO

from medclass.utils.errors import MedclassError

SIZES = (28, 64, 128, 224)

SYMMETRY: dict[str, str] = {
    "pathmnist": "invariant",
    "chestmnist": "sided",
    "dermamnist": "invariant",
    "octmnist": "mirror",
    "pneumoniamnist": "sided",
    "retinamnist": "mirror",
    "breastmnist": "mirror",
    "bloodmnist": "invariant",
    "tissuemnist": "invariant",
    "organamnist": "sided",
    "organcmnist": "sided",
    "organsmnist": "sided",
}
NAMES = tuple(SYMMETRY)


@dataclass(frozen=True)
class MedMNISTInfo:
    name: str
    task: str  # multi-class | binary-class | multi-label | ordinal-regression
    class_names: tuple[str, ...]
    n_channels: int
    symmetry: str
    url: str
    md5: str
    n_samples: dict[str, int]


def normalize_task(task: str) -> str:
    """medmnist writes ChestMNIST's task as 'multi-label, binary-class'."""
    return "multi-label" if task.startswith("multi-label") else task


def filename(name: str, size: int) -> str:
    """Official file names: `{name}.npz` at 28 px, `{name}_{size}.npz` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def medmnist_info(name: str, size: int = 28) -> MedMNISTInfo:
    if name not in SYMMETRY:
        raise MedclassError(f"unknown MedMNIST set data.name={name!r}; choose one of: {', '.join(NAMES)}")
    if size not in SIZES:
        raise MedclassError(f"data.size={size} is not a MedMNIST size; choose one of {SIZES}")
    meta = INFO[name]
    suffix = "" if size == 28 else f"_{size}"
    labels = meta["label"]
    return MedMNISTInfo(
        name=name,
        task=normalize_task(meta["task"]),
        class_names=tuple(labels[str(i)] for i in range(len(labels))),
        n_channels=int(meta["n_channels"]),
        symmetry=SYMMETRY[name],
        url=meta[f"url{suffix}"],
        md5=meta[f"MD5{suffix}"],
        n_samples=dict(meta["n_samples"]),
    )
