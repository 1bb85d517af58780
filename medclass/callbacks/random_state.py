"""Random generators travel with every checkpoint, so that a resumed run can draw what the uninterrupted one would.

A run resumed from `last.ckpt` gets the weights, optimizer and scheduler back from Lightning; this
adds the generators behind shuffling, augmentation and dropout: torch (CPU and CUDA), NumPy,
Python's `random`, and the Albumentations pipeline's own. They are put back as the checkpoint loads,
because the training iterator is built right after (`configure_optimizers` asks for
`estimated_stepping_batches`, which builds it) and its creation draws the worker base seed before the
sampler draws its shuffling seed: restoring any later leaves the shuffle one draw out of step. The
sanity check in between runs under Lightning's `isolate_rng`. Strategies that load checkpoints after
setup (DeepSpeed) restore too late for an identical shuffle.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger("medclass")

def _pipeline_parts(trainer: L.Trainer) -> list[Any]:
    """The training transform and every transform inside it that owns generators (Albumentations)."""
    datasets = getattr(trainer.datamodule, "datasets", None) or {}
    found, todo = [], [getattr(datasets.get("train"), "transform", None)]
    while todo:
        part = todo.pop()
        if hasattr(part, "py_random") and hasattr(part, "random_generator"):
            found.append(part)
        todo.extend(getattr(part, "transforms", None) or [])
    return found


def capture(trainer: L.Trainer) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
        "pipeline": [(p.random_generator.bit_generator.state, p.py_random.getstate())
                     for p in _pipeline_parts(trainer)],
    }


def restore(state: dict[str, Any], trainer: L.Trainer) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))
    parts = _pipeline_parts(trainer)
    if len(parts) != len(state["pipeline"]):  # augment= changed since the checkpoint: its streams cannot carry over
        log.warning("augmentation pipeline differs from the checkpoint's (%d vs %d random parts); its random "
                    "stream starts afresh", len(parts), len(state["pipeline"]))
        return
    for part, (np_gen, py_gen) in zip(parts, state["pipeline"], strict=True):
        part.random_generator.bit_generator.state = np_gen
        part.py_random.setstate(_as_tuples(py_gen))


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class RandomState(L.Callback):
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["random_state"] = capture(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if "random_state" in checkpoint:
            restore(checkpoint["random_state"], trainer)
