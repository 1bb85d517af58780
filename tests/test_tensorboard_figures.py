"""TensorBoard figures from a real CLI run: a confusion matrix per validation epoch, the worst test mistakes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medclass.callbacks import ConfusionMatrixImage, WorstMistakes
from medclass.callbacks.tensorboard import image_grid, to_rgb
from medclass.eval.figures import confusion_figure

from .conftest import FAST, write_npz

EPOCHS = 2


@pytest.fixture(scope="module")
def events(blood_run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(blood_run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return acc


def test_confusion_matrix_every_validation_epoch(events: EventAccumulator) -> None:
    tags = set(events.Tags()["images"])
    assert {"val/confusion_matrix", "best_val/confusion_matrix", "test/confusion_matrix"} <= tags
    val = events.Images("val/confusion_matrix")
    assert len(val) == EPOCHS  # none from the sanity check
    assert len({e.step for e in val}) == EPOCHS
    for e in val:
        assert 300 <= e.width <= 2000 and 300 <= e.height <= 2000
        assert e.encoded_image_string.startswith(b"\x89PNG")


def test_worst_mistakes_at_test_time(events: EventAccumulator) -> None:
    (image,) = events.Images("test/worst_mistakes")
    assert 400 <= image.width <= 3000 and 250 <= image.height <= 3000
    assert len(image.encoded_image_string) > 5000  # pictures, not an empty canvas


def test_csv_logger_run_draws_nothing_and_succeeds(tmp_path: Path) -> None:
    root = write_npz(tmp_path / "medmnist", "breastmnist").parent  # grey, binary
    from medclass.tasks.train import train

    from .conftest import compose_train

    out = tmp_path / "run"
    train(compose_train([f"data.root={root}", "data.name=breastmnist", "logger=csv", *FAST], out))
    assert (out / "metrics.json").is_file() and not (out / "tensorboard").exists()


def test_grey_grid_and_binary_matrix_render() -> None:
    grid = image_grid(torch.rand(3, 1, 28, 28), ["a →\nb p=0.90"] * 3, ncols=4)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype.name == "uint8"
    assert image_grid(torch.empty(0), []).shape[2] == 3  # no mistakes: still a picture saying so
    matrix = to_rgb(confusion_figure(torch.tensor([[5, 1], [0, 4]]).numpy(), ["benign", "malignant"]))
    assert matrix.shape[0] > 100 and matrix.shape[1] > 100


def test_multi_label_is_skipped(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(sanity_checking=False, loggers=[logger], is_global_zero=True, current_epoch=0,
                              global_step=0, state=SimpleNamespace(fn="fit"))
    module = SimpleNamespace(hparams=SimpleNamespace(data_info={"task": "multi-label", "class_names": ["a", "b"]}),
                             device=torch.device("cpu"), eval_split="test")
    outputs = {"probs": torch.rand(4, 2), "targets": torch.ones(4, 2)}
    cm, wm = ConfusionMatrixImage(), WorstMistakes()
    cm.on_validation_epoch_start(trainer, module)
    cm.on_validation_batch_end(trainer, module, outputs, (torch.rand(4, 1, 8, 8), outputs["targets"]), 0)
    cm.on_validation_epoch_end(trainer, module)
    wm.on_test_epoch_start(trainer, module)
    wm.on_test_batch_end(trainer, module, outputs, (torch.rand(4, 1, 8, 8), outputs["targets"]), 0)
    wm.on_test_epoch_end(trainer, module)
    assert cm.matrix is None and not wm.active and wm.seen == 0
