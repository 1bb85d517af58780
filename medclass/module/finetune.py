"""Transfer learning: which parameters are the head, a frozen base, frozen early layers, and a smaller
learning rate for the base.

The head is what timm's `get_classifier()` returns, or a `.head` attribute (SimpleCNN). Every
parameter is in the optimizer from the first step (two groups), and a frozen base simply has
`requires_grad=False` with its BatchNorm layers in eval mode, so unfreezing later needs no new
optimizer or scheduler state.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medclass.utils.errors import MedclassError


def head_of(net: nn.Module) -> nn.Module:
    head = net.get_classifier() if hasattr(net, "get_classifier") else getattr(net, "head", None)
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise MedclassError(
            f"{type(net).__name__} has no trainable head (a get_classifier() method or a .head module); "
            "module.freeze_backbone and module.backbone_lr_scale need one"
        )
    return head


def split_parameters(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters."""
    head = {id(p) for p in head_of(net).parameters()}
    params = list(net.parameters())
    return [p for p in params if id(p) not in head], [p for p in params if id(p) in head]


def backbone_modules(net: nn.Module) -> list[nn.Module]:
    head = set(head_of(net).modules())
    return [m for m in net.modules() if m not in head]


def set_backbone_frozen(net: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the base; frozen BatchNorm layers keep their running statistics (eval mode),
    unfrozen ones follow the network's mode again (Lightning restores each layer's own mode after
    validation, so an eval-mode layer would otherwise stay frozen in statistics for good)."""
    for p in split_parameters(net)[0]:
        p.requires_grad_(not frozen)
    for m in backbone_modules(net):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(net.training and not frozen)


def freeze_named_layers(net: nn.Module, names: Sequence[str]) -> None:
    """Freeze named layers for the whole run, BatchNorm statistics included (timm's `freeze`).

    Freezing the stem and first blocks costs little accuracy in fine-tuning and saves their backward
    pass, the most expensive one at full resolution: 1.5x more images a second for EfficientNet-Lite0
    at 128 px on a CPU (benchmarks/finetune_speed.py).
    """
    if not names:
        return
    known = dict(net.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        top = ", ".join(n for n, _ in net.named_children())
        lists = (n for n, c in net.named_children() if isinstance(c, (nn.Sequential, nn.ModuleList)) and len(c))
        deeper = next((f"{n}.0" for n in lists), "")
        raise MedclassError(
            f"module.freeze_layers: {type(net).__name__} has no layer {', '.join(map(repr, unknown))}; "
            f"its top-level layers are {top}" + (f" (deeper ones by dotted name, e.g. {deeper})" if deeper else "")
        )
    from timm.utils.model import freeze  # timm (and what it imports) loads only when layers are frozen

    freeze(net, list(names))
