"""Grad-CAM overlays (the `grad-cam` package): where in the image the predicted class's evidence sits.

The target layer is the last convolutional stage: timm's `feature_info[-1]` for timm backbones, else
the last top-level child that holds a convolution (`features` of the custom CNN, `layer4` of a
torchvision ResNet). `layer=` (a dotted module name such as `layer3` or `features.1`) overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from medclass.utils.errors import MedclassError
from medclass.utils.extras import require
from medclass.utils.io import atomic_open


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def target_layer(net: nn.Module, layer: str | None = None) -> nn.Module:
    """The module whose activations Grad-CAM weighs: `layer` by name, or the last conv stage."""
    if layer:
        try:
            return net.get_submodule(layer)
        except AttributeError as err:
            names = [n for n, m in net.named_children() if _has_conv(m)]
            raise MedclassError(f"cam_layer={layer} is not a module of {type(net).__name__}; its convolutional "
                                f"parts: {', '.join(names) or 'none'} (or nested names such as <part>.0)") from err
    info = getattr(net, "feature_info", None)  # timm: the stages it would return as feature maps
    if isinstance(info, list) and info and "module" in info[-1]:
        return net.get_submodule(info[-1]["module"])
    stages = [m for _, m in net.named_children() if _has_conv(m)]
    if not stages:
        raise MedclassError(f"{type(net).__name__} has no convolution for Grad-CAM; name a layer with cam_layer=")
    return stages[-1]


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """A uint8 RGB heat-map blend at the original image's size (the CAM is at the network's input size)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    mask = cv2.resize(cam.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(mask, 0, 1), use_rgb=True)


def save_cam_overlays(net: nn.Module, x: torch.Tensor, targets: Sequence[int], images: Sequence[np.ndarray],
                      outs: Sequence[Path], layer: str | None = None) -> None:
    """One PNG per image in `outs`: the Grad-CAM of class `targets[i]` over the original `images[i]`."""
    GradCAM = require("pytorch_grad_cam", "cam", "Grad-CAM overlays (cam=true)").GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad(), GradCAM(model=net, target_layers=[target_layer(net, layer)]) as cam:
            # gradients must reach the target layer even when the layers before it are frozen
            maps = cam(input_tensor=x.detach().clone().requires_grad_(True),
                       targets=[ClassifierOutputTarget(t) for t in targets])
    finally:
        net.train(was_training)
    for image, heat, out in zip(images, maps, outs, strict=True):
        with atomic_open(out, "wb") as f:
            Image.fromarray(overlay(image, heat)).save(f, format="PNG")
