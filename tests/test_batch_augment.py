"""The fast path (augment=batch): same normalization as the per-sample path, safe flips, real training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from medclass.augment import batch_train_transform, eval_transform
from medclass.data.base import BatchDataset
from medclass.utils.errors import MedclassError

from .conftest import FAST, compose_train

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def images(n: int = 6, channels: int = 3, size: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def kinds(tf: torch.nn.Module) -> set[str]:
    return {type(op).__name__ for op in tf.augment.children()}


def test_without_augmentation_equals_the_per_sample_eval_transform() -> None:
    x = images()
    plain = batch_train_transform(None, MEAN, STD, symmetry="sided", p_affine=0.0)
    batched = plain(torch.from_numpy(x))
    reference = torch.stack([eval_transform(None, MEAN, STD)(image=img)["image"] for img in x])
    assert batched.shape == (6, 3, 28, 28) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)


def test_augmentation_is_per_sample_and_resizes() -> None:
    x = torch.from_numpy(np.repeat(images(1), 16, axis=0))  # 16 copies of one image
    out = batch_train_transform(32, MEAN, STD, symmetry="invariant", p_affine=1.0)(x)
    assert out.shape == (16, 3, 32, 32)
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 16  # a different draw for every copy


@pytest.mark.parametrize("border", ["reflect", "constant", "replicate"])
def test_fused_warp_equals_the_op_by_op_kornia_chain(border: str) -> None:
    """One resampling with the product of the ops' matrices = Kornia running affine, flips and turns in turn."""
    tf = batch_train_transform(None, MEAN, STD, symmetry="invariant", p_affine=0.8, border=border)
    assert kinds(tf) == {"RandomAffine", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation90"}
    x = torch.from_numpy(images(32)).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(3)
    fused = tf.warp(x)
    torch.manual_seed(3)
    chain = tf.augment(x)  # the same parameter draws, one warp per op
    assert not torch.allclose(fused, x)
    torch.testing.assert_close(fused, chain, atol=2e-5, rtol=0)


def test_flip_defaults_follow_symmetry_and_extra_must_be_kornia() -> None:
    flips = {"RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation90"}
    assert flips <= kinds(batch_train_transform(None, MEAN, STD, "invariant"))
    assert not flips & kinds(batch_train_transform(None, MEAN, STD, "sided"))
    assert "RandomHorizontalFlip" in kinds(batch_train_transform(None, MEAN, STD, "sided", hflip=0.5))
    with pytest.raises(MedclassError, match="Kornia transforms"):
        batch_train_transform(None, MEAN, STD, extra=[object()])
    with pytest.raises(MedclassError, match="augment.border"):
        batch_train_transform(None, MEAN, STD, border="wrap")


def test_datamodule_reads_uint8_batches_and_augments_them_on_the_device(blood_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(["augment=batch", f"data.root={blood_root}", "data.batch_size=16"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup()
    assert isinstance(dm.datasets["train"], BatchDataset)
    loader = dm.train_dataloader()
    assert loader.num_workers == 0
    images, labels = next(iter(loader))
    assert images.shape == (16, 28, 28, 3) and images.dtype == torch.uint8
    plain = dm.datasets["train_eval"]  # the same rows of the same map: each uint8 batch row is a training image
    rows = {plain.images[i].tobytes(): plain.labels[n] for n, i in enumerate(plain.index)}
    assert all(rows[image.numpy().tobytes()] == label for image, label in zip(images, labels, strict=True))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (16, 3, 28, 28) and x.dtype == torch.float32 and torch.equal(y, labels)
    val = next(iter(dm.val_dataloader()))  # evaluation batches pass through untouched
    assert dm.on_after_batch_transfer(val, 0)[0] is val[0]


def test_train_and_eval_on_the_fast_path(blood_root: Path, tmp_path: Path) -> None:
    from medclass.tasks.evaluate import evaluate
    from medclass.tasks.train import train

    kornia_extra = "augment.extra=[{_target_: kornia.augmentation.ColorJiggle, brightness: 0.2, p: 0.5}]"
    metrics = train(compose_train([*FAST, "augment=batch", kornia_extra, f"data.root={blood_root}"], tmp_path / "run"))
    assert metrics["run"]["steps"] > 0
    # eval.py scores the fast path's checkpoint as training's final validation did
    val = evaluate(compose_train([f"ckpt_path={metrics['run']['best_checkpoint']}", "split=val", "report=false"],
                                 tmp_path / "eval", config_name="eval"))["val"]
    assert val["val/acc"] == pytest.approx(metrics["best_val"]["val/acc"], abs=1e-6)
    assert val["val/loss"] == pytest.approx(metrics["best_val"]["val/loss"], abs=1e-5)
