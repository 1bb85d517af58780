"""Pretrained backbones: every preset builds, local weights load strictly, offline gives a clear error,
a frozen base stays put while the head learns."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from medclass.model import pretrained_normalization, timm_model
from medclass.module import Classifier
from medclass.module.checkpoint import load_classifier
from medclass.utils.cli import find_user_error
from medclass.utils.errors import MedclassError

from .conftest import FAST, ROOT, compose_train, run_script

WEIGHTS = Path(os.environ.get("MEDCLASS_WEIGHTS") or ROOT.parent / "shared" / "weights")
LITE0 = WEIGHTS / "tf_efficientnet_lite0_in1k_timm.pth"
needs_lite0 = pytest.mark.skipif(not LITE0.is_file(), reason=f"{LITE0} not present")


@pytest.mark.parametrize("preset", ["resnet18", "resnet50", "vgg16", "efficientnet_lite0", "timm"])
@pytest.mark.parametrize("chans", [1, 3])
def test_every_preset_builds_for_grey_and_colour(preset: str, chans: int, tmp_path: Path) -> None:
    cfg = compose_train([f"model={preset}", "model.pretrained=false"], tmp_path)
    net = instantiate(cfg.model, in_chans=chans, num_classes=5)
    size = 32
    with torch.no_grad():
        assert net.eval()(torch.rand(2, chans, size, size)).shape == (2, 5)


@needs_lite0
def test_local_weights_load_and_change_the_outputs() -> None:
    torch.manual_seed(0)
    scratch = timm_model("tf_efficientnet_lite0", in_chans=3, num_classes=1000).eval()
    loaded = timm_model("tf_efficientnet_lite0", in_chans=3, num_classes=1000, weights=str(LITE0)).eval()
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    for key, value in state.items():  # every tensor of the file, byte for byte
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(scratch(x), loaded(x))
    grey = timm_model("tf_efficientnet_lite0", in_chans=1, num_classes=4, weights=str(LITE0))
    assert grey.conv_stem.weight.shape[1] == 1 and grey.get_classifier().out_features == 4


@needs_lite0
def test_pretrained_looks_in_the_weights_folder_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLASS_WEIGHTS", str(LITE0.parent))
    found = timm_model("tf_efficientnet_lite0", num_classes=1000, pretrained=True).state_dict()
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    assert all(torch.equal(found[k], v) for k, v in state.items())
    scratch = timm_model("tf_efficientnet_lite0", num_classes=1000, pretrained=False).state_dict()
    assert not torch.equal(scratch["conv_stem.weight"], state["conv_stem.weight"])  # the folder is for pretrained only


def test_weight_and_download_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MedclassError, match="is not a file"):
        timm_model("resnet18", weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "other.pth"
    torch.save({"not.a.layer": torch.zeros(1)}, bad)
    with pytest.raises(MedclassError, match="does not fit timm model 'resnet18'"):
        timm_model("resnet18", weights=str(bad))
    with pytest.raises(MedclassError, match="not a timm model"):
        timm_model("resnet_eighteen")


def test_offline_pretrained_request_is_one_error_line(blood_root: Path, tmp_path: Path) -> None:
    """A cluster node with no internet and an empty cache: train.py stops, naming both ways out."""
    hub_off = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "TORCH_HOME": str(tmp_path)}
    proc = run_script("train.py", "model=resnet18", "model.pretrained=true", f"data.root={blood_root}",
                      f"hydra.run.dir={tmp_path / 'run'}", *FAST, env=hub_off)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: could not get pretrained weights for 'resnet18'" in proc.stderr
    assert "model.weights=<path>" in proc.stderr and "model.pretrained=false" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained on random weights


def test_checkpoint_of_a_pretrained_model_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint holds the fine-tuned weights: loading it must not go looking for ImageNet ones."""
    module = frozen_module(tmp_path, "model.pretrained=false")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["pretrained"] = True  # as trained: pretrained weights requested
    torch.save(ckpt, tmp_path / "m.ckpt")
    for var, value in {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "TORCH_HOME": str(tmp_path),
                       "MEDCLASS_WEIGHTS": ""}.items():
        monkeypatch.setenv(var, value)
    loaded = load_classifier(tmp_path / "m.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values(),
                                                  strict=True))


def test_pretrained_normalization_only_for_pretrained_timm_models(tmp_path: Path) -> None:
    lite = compose_train(["model=efficientnet_lite0"], tmp_path).model
    assert pretrained_normalization(lite) == ([0.5] * 3, [0.5] * 3)
    assert pretrained_normalization(compose_train(["model=resnet18"], tmp_path).model) is None
    assert pretrained_normalization(compose_train(["model=cnn"], tmp_path).model) is None


def frozen_module(tmp_path: Path, *extra: str) -> Classifier:
    cfg = compose_train(["model=resnet18", "module.freeze_backbone=true", *extra], tmp_path)
    info = {"task": "multi-class", "class_names": ["a", "b", "c"], "in_chans": 1, "image_size": 32,
            "mean": [0.5], "std": [0.25], "symmetry": "sided"}
    return instantiate(cfg.module, data_info=info)


def test_frozen_base_stays_put_while_the_head_learns(tmp_path: Path) -> None:
    module = frozen_module(tmp_path, "scheduler=none")
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in module.net.fc.parameters())  # frozen from construction on
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    optimizer = module.configure_optimizers()
    module.train()
    x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 3, (8,))
    loss = module.loss(module(x), y)
    loss.backward()
    optimizer.step()
    after = module.net.state_dict()
    head = {f"fc.{k}" for k in module.net.fc.state_dict()}
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == head  # not one backbone weight nor BatchNorm statistic changed


class Probe(L.Callback):
    """Records the first backbone weight and the optimizer's learning rates at every epoch end."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.bn_means: list[torch.Tensor] = []
        self.lrs: list[list[float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.weights.append(module.net.conv1.weight.detach().clone())
        self.bn_means.append(module.net.layer1[0].bn1.running_mean.clone())
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_unfreezing_after_an_epoch_with_a_smaller_backbone_rate(blood_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(["model=resnet18", "module.freeze_backbone=true", "module.unfreeze_at_epoch=1",
                         "module.backbone_lr_scale=0.1", "scheduler=onecycle", f"data.root={blood_root}",
                         *FAST, "trainer.max_epochs=3"], tmp_path)
    dm = instantiate(cfg.data)
    module = instantiate(cfg.module, data_info=dm.info.as_dict())
    start = module.net.conv1.weight.detach().clone()
    start_mean = module.net.layer1[0].bn1.running_mean.clone()
    probe = Probe()
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[probe])
    trainer.fit(module, datamodule=dm)
    assert torch.equal(probe.weights[0], start)  # epoch 0: frozen
    assert not torch.equal(probe.weights[1], probe.weights[0])  # epoch 1: learning
    assert torch.equal(probe.bn_means[0], start_mean)  # frozen BatchNorm keeps its statistics ...
    assert not torch.equal(probe.bn_means[1], probe.bn_means[0])  # ... and tracks the data again once unfrozen
    for backbone_lr, head_lr in probe.lrs:
        assert backbone_lr == pytest.approx(0.1 * head_lr)


def test_frozen_layers_stay_put_also_after_the_base_unfreezes(blood_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(["model=resnet18", "module.freeze_backbone=true", "module.unfreeze_at_epoch=1",
                         "module.freeze_layers=[conv1,bn1,layer1]", f"data.root={blood_root}", *FAST], tmp_path)
    dm = instantiate(cfg.data)
    module = instantiate(cfg.module, data_info=dm.info.as_dict())
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    after = module.net.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"layer2", "layer3", "layer4", "fc"}  # BatchNorm statistics of the frozen layers too
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")
    reloaded = load_classifier(tmp_path / "frozen.ckpt").net.state_dict()  # same layers frozen, same keys
    assert all(torch.equal(after[k], reloaded[k]) for k in after) and after.keys() == reloaded.keys()


def test_an_unknown_layer_to_freeze_names_the_real_ones(tmp_path: Path) -> None:
    with pytest.raises(Exception) as raised:
        frozen_module(tmp_path, "module.freeze_layers=[stem]")
    message = str(find_user_error(raised.value))
    assert "no layer 'stem'; its top-level layers are conv1, bn1, act1, maxpool, layer1" in message
    assert "e.g. layer1.0" in message


@pytest.mark.parametrize(("name", "side"), [("resnet18", 4), ("tf_efficientnet_lite0", 2)])
def test_small_input_keeps_the_stem_at_full_resolution(name: str, side: int) -> None:
    x = torch.rand(2, 1, 28, 28)
    assert timm_model(name, in_chans=1, num_classes=3).forward_features(x).shape[-1] == 1
    small = timm_model(name, in_chans=1, num_classes=3, small_input=True)
    assert small.forward_features(x).shape[-1] == side
    assert small(x).shape == (2, 3)


@needs_lite0
def test_small_input_keeps_pretrained_weights_loadable() -> None:
    net = timm_model("tf_efficientnet_lite0", in_chans=3, num_classes=4, weights=str(LITE0), small_input=True)
    reference = timm_model("tf_efficientnet_lite0", in_chans=3, num_classes=4, weights=str(LITE0))
    assert torch.equal(net.conv_stem.weight, reference.conv_stem.weight) and net.conv_stem.stride == (1, 1)
    with pytest.raises(MedclassError, match="'vgg16' has no strided first convolution"):
        timm_model("vgg16", in_chans=1, num_classes=2, small_input=True)
