"""A package's public names, imported on first use (PEP 562), so importing one light module of a package
(`medclass.data.registry`, `medclass.model.registry`) does not load the whole deep-learning stack.

Commands answer in seconds only if refusing a bad model file or predicting one image does not pay for
Lightning, timm, torchmetrics and Albumentations first (docs/development.md "Start-up").
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: each name in `where` from its submodule, imported when first asked for."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    return __getattr__
