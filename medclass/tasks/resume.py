"""Resuming (`train.py ckpt_path=`) hands Lightning far more than weights: loop counters, optimizer and scheduler
states, callback states with paths that ModelCheckpoint later deletes. `check_resume` reads the whole file as
data (every part a bounded plain tree; callback states only of the callbacks medclass configures, each against
its schema), and `Resume.prepare` keeps what fits this run (weights of the configured network; ModelCheckpoint
paths inside this run's checkpoint folder, else dropped and rebuilt) and writes it as a new file in the run
folder. Lightning reads only that copy; `ResumeGuard` then holds the optimizer, scheduler and loop states
against the live ones before Lightning restores them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medclass.module import Classifier
from medclass.module.checkpoint import PRECISION_STATE, check_weights, load_weights, read_checkpoint
from medclass.module.hparams import validate
from medclass.untrusted import model_file as mf
from medclass.untrusted.files import MiB, Refused, printable
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

log = logging.getLogger("medclass")


# -- resuming: the whole file checked, then a copy of what fits this run ------------------------------------
LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")
MAX_OPTIMIZERS = 16


def _scalar(none: bool = False) -> s.Check:
    """A 0-dim real floating-point tensor that is not NaN (±inf is Lightning's own start value); or None."""
    def check(value: Any, where: str) -> Any:
        if value is None and none:
            return value
        if (not isinstance(value, torch.Tensor) or value.ndim != 0 or mf.dtype_name(value.dtype) not in mf.FLOATS
                or bool(torch.isnan(value))):
            raise s.Invalid(f"{where}: expected a scalar tensor that is not NaN{' (or null)' if none else ''}")
        return value
    return check


PATH = s.text(mf.MAX_TEXT)
COUNT = s.integer(0, 10**12)
CALLBACK_STATES: dict[str, s.Check] = {  # the callbacks medclass configures that keep state, by class name
    "ModelCheckpoint": s.record({
        "monitor": s.optional(s.text(256)), "best_model_score": _scalar(none=True), "best_model_path": PATH,
        "current_score": _scalar(none=True), "dirpath": s.optional(PATH),
        "best_k_models": s.mapping(PATH, _scalar(), 10_000), "kth_best_model_path": PATH,
        "kth_value": _scalar(none=True), "last_model_path": PATH}, required=("best_model_score", "best_model_path")),
    "EarlyStopping": s.record({
        "wait_count": COUNT, "stopped_epoch": COUNT, "best_score": _scalar(), "patience": COUNT,
        "stopping_reason": s.integer(0, 64), "stopping_reason_message": s.optional(s.text(1000))},
        required=("wait_count", "stopped_epoch", "best_score", "patience")),
    **dict.fromkeys(("EMA", "EMAWeightAveraging", "WeightAveraging"),
                    s.record({"latest_update_step": COUNT}, required=("latest_update_step",))),
}
STATE_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\{.*\})?", re.DOTALL)


def _part(ckpt: Mapping[str, Any], key: str, check: s.Check, source: str) -> Any:
    try:
        return check(ckpt[key], key)
    except s.Invalid as err:
        raise s.Invalid(f"{source}: {err}; resume only checkpoints medclass wrote, or start from the weights "
                        "with init_from=<file> (docs/training.md)") from None


def _tree(max_values: int = mf.MAX_TREE_VALUES) -> s.Check:
    def check(value: Any, where: str) -> Any:
        try:
            mf.check_plain_tree(value, where, max_values)
        except Refused as err:
            raise s.Invalid(str(err)) from None
        return value
    return check


def _callbacks(value: Any, where: str) -> dict[str, Any]:
    """Callback states keyed by Lightning's state key (`ModelCheckpoint{'monitor': ...}`): only the callbacks
    medclass configures, each through its schema."""
    if not isinstance(value, Mapping) or len(value) > 64:
        raise s.fail(where, value, "a mapping of at most 64 callback states")
    out = {}
    for key, state in value.items():
        found = STATE_KEY.fullmatch(key) if isinstance(key, str) and len(key) <= 2000 else None
        if not found or found[1] not in CALLBACK_STATES:
            raise s.Invalid(f"{where}[{printable(repr(key), 100)}] is not a callback medclass configures "
                            f"({', '.join(sorted(set(CALLBACK_STATES)))} keep state)")
        out[key] = CALLBACK_STATES[found[1]](state, f"{where}[{found[1]}]")
    return out


def _random_state(value: Any, where: str) -> dict[str, Any]:
    """medclass.callbacks.random_state's generators, each set on a scratch generator of its kind first: what
    torch, NumPy and Python refuse is refused here, before training starts."""
    import random

    import numpy as np

    from medclass.callbacks.random_state import _as_tuples

    _tree(100_000)(value, where)
    state = s.record({"torch": lambda v, w: v, "cuda": s.list_of(lambda v, w: v, 0, 64), "numpy": lambda v, w: v,
                      "python": lambda v, w: v, "pipeline": s.list_of(lambda v, w: v, 0, 1000)},
                     required=("torch", "cuda", "numpy", "python", "pipeline"))(value, where)
    def byte_state(v: Any) -> bool:
        return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 1 and v.numel() <= MiB

    trials: list[tuple[str, Any]] = [
        ("torch", lambda: byte_state(state["torch"]) and torch.Generator().set_state(state["torch"].clone())),
        ("cuda", lambda: all(byte_state(v) for v in state["cuda"])),
        ("numpy", lambda: np.random.RandomState().set_state(
            (state["numpy"][0], np.asarray(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))),
        ("python", lambda: random.Random().setstate(_as_tuples(state["python"]))),
    ]
    for i, part in enumerate(state["pipeline"]):
        def pipeline(part: Any = part) -> bool:
            generator, python = part
            kind = generator["bit_generator"]
            if kind not in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
                return False
            getattr(np.random, kind)().state = generator
            random.Random().setstate(_as_tuples(python))
            return True
        trials.append((f"pipeline[{i}]", pipeline))
    for name, trial in trials:
        try:
            ok = trial() is not False
        except Exception:
            ok = False
        if not ok:
            raise s.Invalid(f"{where}.{name} is not a generator state {name.split('[')[0]} can take")
    return state


def _optimizer_states(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_OPTIMIZERS:
        raise s.fail(where, value, f"a list of at most {MAX_OPTIMIZERS} optimizer states")
    _tree()(value, where)
    for i, opt in enumerate(value):
        s.record({"state": s.mapping(s.integer(0, 10**7), s.mapping(s.text(64), lambda v, w: v, 64), 10**7),
                  "param_groups": s.list_of(s.mapping(s.text(64), lambda v, w: v, 256), 0, 1000)},
                 required=("state", "param_groups"))(opt, f"{where}[{i}]")
    return value


TOP_LEVEL: dict[str, s.Check] = {
    "epoch": COUNT, "global_step": COUNT,
    "pytorch-lightning_version": s.text(40, r"[0-9A-Za-z.+\-]+", "a version such as 2.6.0"),
    "hparams_name": s.optional(s.text(100)), "medclass_seal": s.optional(s.text(128)),
    "loops": s.record(dict.fromkeys(LOOPS, _tree(100_000))),
    "callbacks": _callbacks,
    "optimizer_states": _optimizer_states,
    "lr_schedulers": s.list_of(s.mapping(s.text(64), _tree(1_000_000), 256), 0, MAX_OPTIMIZERS),
    "random_state": _random_state,
    "averaging_state": s.mapping(s.text(200), _tree(1000), 64),
}


@dataclass
class Resume:
    """A checkpoint checked for resuming; `prepare` makes the copy Lightning reads."""

    path: Path
    ckpt: dict[str, Any]
    source: str

    def prepare(self, module: Classifier, callbacks: list[Any], folder: Path, rank: int = 0, training: bool = True
                ) -> tuple[Path, ResumeGuard]:
        """The parts of the checkpoint that fit this run, written to `folder` as a new file (medclass.utils.io) for
        Lightning to read instead of the original; and the callback that checks the rest once fit has built its
        optimizers. Weights must be the configured network's (names, shapes, real floating point, finite);
        optimizer state tensors the shapes of the parameters they belong to; ModelCheckpoint paths files in this
        run's checkpoint folder, or the record of best checkpoints starts afresh."""
        from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging

        from medclass.utils.io import atomic_open

        ckpt, source = self.ckpt, self.source
        missing = [k for k in ("optimizer_states", "lr_schedulers", "loops") if k not in ckpt]
        if training and missing:  # Lightning would stop with a KeyError after setting everything up
            raise MedclassError(f"{source} holds weights but no training state ({', '.join(missing)}), so there is "
                                f"nothing to resume; start a new training from its weights with init_from={self.path}")
        expected = mf.expected_index(module)
        copy: dict[str, Any] = {k: ckpt[k] for k in ("epoch", "global_step", "pytorch-lightning_version",
                                                      "hparams_name", "random_state") if k in ckpt}
        copy["state_dict"] = self._weights(ckpt["state_dict"], expected, module, "state_dict")
        load_weights(module, copy["state_dict"], self.source)  # what Lightning restores next: probed first
        averaging = any(isinstance(c, WeightAveraging) for c in callbacks)
        if averaging and "current_model_state" in ckpt and "averaging_state" in ckpt:
            copy["current_model_state"] = self._weights(ckpt["current_model_state"], expected, module,
                                                        "current_model_state")
            copy["averaging_state"] = ckpt["averaging_state"]
        if training:  # testing (train=false) restores the weights; progress, optimizer and schedule do not matter
            copy["loops"] = {"fit_loop": ckpt["loops"].get("fit_loop", {})}
            copy["optimizer_states"] = self._optimizers(ckpt["optimizer_states"], module)
            copy["lr_schedulers"] = ckpt["lr_schedulers"]
            copy.update({k: v for k, v in ckpt.items() if isinstance(k, str) and PRECISION_STATE.fullmatch(k)})
        configured = {c.state_key: c for c in callbacks if hasattr(c, "state_key")}
        kept = {}
        for key, state in (ckpt.get("callbacks") or {}).items():
            callback = configured.get(key)
            if callback is None:
                continue  # a callback this run does not configure: Lightning would not restore it either
            kept[key] = self._checkpoint_paths(state, callback) if isinstance(callback, ModelCheckpoint) else state
        copy["callbacks"] = kept
        copy = mf.compact(copy)  # no tensor drags a larger storage (sparse, gigabytes) into the copy
        name = self.path.stem + (f".rank{rank}" if rank else "") + ".ckpt"
        target = folder / name
        with atomic_open(target, "wb") as f:
            torch.save(copy, f)
        return target, ResumeGuard(copy, source, self.path)

    def _weights(self, state: Any, expected: Mapping[str, mf.TensorInfo], module: Classifier, part: str
                 ) -> Mapping[str, torch.Tensor]:
        """A state_dict that is exactly the configured network's, with every number finite in its dtype and every
        BatchNorm variance non-negative (reads the network's own bytes, nothing else)."""
        where = f"{self.source} ({part})"
        try:
            mf.check_against(mf.index_of(state, where), expected, where)
        except Refused as err:
            raise s.Invalid(f"{err}; resume with the network the checkpoint was trained with, or start from its "
                            "weights with init_from=<file> (docs/training.md)") from None
        dtypes = {k: v.dtype for k, v in module.state_dict().items()}
        for key, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            cast = tensor.to(dtypes[key])
            if not bool(torch.isfinite(cast).all()):
                raise s.Invalid(f"{where}: weight {key} holds NaN or infinite values (in the network's "
                                f"{mf.dtype_name(dtypes[key])})")
            if key.endswith("running_var") and bool((cast < 0).any()):
                raise s.Invalid(f"{where}: {key} holds a negative BatchNorm variance")
        return state

    def _optimizers(self, states: list[Any], module: Classifier) -> list[Any]:
        """Optimizer states laid out as the configured module's optimizer will be: one optimizer, its parameter
        groups as `Classifier._param_groups` makes them, each state tensor a scalar or its parameter's shape,
        finite."""
        groups = module._param_groups()
        groups = [list(g["params"]) for g in groups] if isinstance(groups, list) else [list(groups)]
        params = [p for g in groups for p in g]
        where = f"{self.source}: optimizer_states"
        advice = "; resume with the optimizer and network the checkpoint was trained with (docs/training.md)"
        if len(states) != 1:
            raise s.Invalid(f"{where} holds {len(states)} optimizers; this run configures 1{advice}")
        saved = states[0]
        sizes = [len(g.get("params") or []) for g in saved["param_groups"]]
        if sizes != [len(g) for g in groups]:
            raise s.Invalid(f"{where}: parameter groups of {sizes} parameters; this run's optimizer has "
                            f"{[len(g) for g in groups]}{advice}")
        for index, entry in saved["state"].items():
            if index >= len(params):
                raise s.Invalid(f"{where}: state for parameter {index}; the network has {len(params)}{advice}")
            for name, value in entry.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.ndim and tuple(value.shape) != tuple(params[index].shape):
                    raise s.Invalid(f"{where}: {name} of parameter {index} has shape {list(value.shape)}; the "
                                    f"parameter has {list(params[index].shape)}{advice}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise s.Invalid(f"{where}: {name} of parameter {index} holds NaN or infinite values")
        return states

    def _checkpoint_paths(self, state: dict[str, Any], callback: Any) -> dict[str, Any]:
        """ModelCheckpoint's record with every path a `.ckpt` file directly in this run's checkpoint folder (links
        resolved, no URL such as `local://`): Lightning deletes "the previous" last and k-th best files by these
        paths. Paths elsewhere are dropped: the record of best checkpoints (paths and scores) starts afresh, and
        `dirpath` is this run's, so Lightning adopts the rest."""
        folder = callback.dirpath
        state = dict(state)

        def inside(path: str) -> bool:
            if not path or not folder or re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", path):
                return False
            real = os.path.realpath(path)
            return real.endswith(".ckpt") and os.path.dirname(real) == os.path.realpath(folder)

        best = [state.get("best_model_path", ""), state.get("kth_best_model_path", ""),
                *state.get("best_k_models", {})]
        if not all(inside(p) for p in best if p):
            log.warning("%s: its ModelCheckpoint record names files outside this run's checkpoint folder %s; the "
                        "record of best checkpoints starts afresh", self.source, folder)
            state.update(best_model_path="", best_model_score=None, best_k_models={}, kth_best_model_path="",
                         kth_value=callback.kth_value)
        if state.get("last_model_path") and not inside(state["last_model_path"]):
            state["last_model_path"] = ""
        state["dirpath"] = folder
        return state


def check_resume(path: str | Path) -> Resume:
    """What `train.py ckpt_path=` checks before anything is built: the reading `load_classifier` does (top-level
    keys, description, weights as named tensors), and every other part as data: loops, callbacks (only those
    medclass configures, each against its schema), optimizer and scheduler states (bounded plain trees), the
    random generators (each set on a scratch generator). `Resume.prepare` then fits it to this run."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    source = f"checkpoint {path}"
    validate(ckpt["hyper_parameters"], source)
    check_weights(ckpt["state_dict"], source)
    if "current_model_state" in ckpt:
        check_weights(ckpt["current_model_state"], f"{source} (current_model_state)")
    for key in ckpt:
        if key in TOP_LEVEL:
            _part(ckpt, key, TOP_LEVEL[key], source)
        elif isinstance(key, str) and PRECISION_STATE.fullmatch(key):
            _part(ckpt, key, _tree(1000), source)
    return Resume(path, ckpt, source)


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, torch.Tensor):
        return "tensor"
    return type(value).__name__ if not isinstance(value, (list, tuple)) else "sequence"


def same_layout(fresh: Any, saved: Any, where: str, subset: bool = False) -> None:
    """`saved` has the layout of `fresh` (the live object's own state): the same keys (`subset`: no others), the
    same kinds of value (numbers, flags, tensors of the same shape), sequences of the same length and the same
    text, so Lightning's and torch's loaders meet only what they wrote themselves."""
    stack = [(where, fresh, saved)]
    while stack:
        at, a, b = stack.pop()
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            extra, missing = sorted(map(str, set(b) - set(a))), sorted(map(str, set(a) - set(b)))
            if extra:
                raise s.Invalid(f"{at} has keys this run's does not ({printable(', '.join(extra), 200)})")
            if missing and not subset:
                raise s.Invalid(f"{at} lacks keys this run's has ({printable(', '.join(missing), 200)})")
            stack.extend((f"{at}.{k}", a[k], b[k]) for k in b)
        elif _kind(a) != _kind(b):
            raise s.Invalid(f"{at}: a {_kind(b)} where this run has a {_kind(a)}")
        elif isinstance(a, (list, tuple)):
            if len(a) != len(b):
                raise s.Invalid(f"{at}: {len(b)} items where this run has {len(a)}")
            stack.extend((f"{at}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)))
        elif isinstance(a, str) and a != b:
            raise s.Invalid(f"{at}: text other than this run's")
        elif isinstance(a, torch.Tensor) and a.shape != b.shape:
            raise s.Invalid(f"{at}: shape {list(b.shape)} where this run has {list(a.shape)}")


SCHEDULE_LENGTH = ("total_steps", "T_max", "milestones", "epochs", "steps_per_epoch", "total_iters")


class ResumeGuard(L.Callback):
    """Before Lightning restores loops, optimizers and schedulers (after `on_fit_start`), the copy's states must
    have the layout of this run's own: one error line instead of a traceback deep in torch. A schedule's length
    must be this run's too (a one-cycle schedule of 4 steps stepped a fifth time raises mid-run)."""

    def __init__(self, copy: Mapping[str, Any], source: str, original: Path) -> None:
        self.copy, self.source, self.original = copy, source, original

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        advice = ("; resume with the configuration the checkpoint was trained with, or start from its weights with "
                  "init_from=<file> (docs/training.md)")
        connector = getattr(trainer, "_checkpoint_connector", None)
        if connector is not None and hasattr(connector, "_ckpt_path"):
            # the file the user named, as Lightning would hold it: its log line names it, and ModelCheckpoint
            # keeps the checkpoint a run resumed from rather than deleting it as an old best
            connector._ckpt_path = str(self.original)
        try:
            loops = self.copy.get("loops", {})
            if "fit_loop" in loops:
                same_layout(trainer.fit_loop.state_dict(), loops["fit_loop"], "loops.fit_loop")
            schedulers = self.copy.get("lr_schedulers", [])
            live = [c.scheduler for c in trainer.lr_scheduler_configs]
            if len(schedulers) != len(live):
                raise s.Invalid(f"lr_schedulers holds {len(schedulers)} schedulers; this run configures {len(live)}")
            for i, (scheduler, state) in enumerate(zip(live, schedulers, strict=True)):
                fresh = scheduler.state_dict()
                same_layout(fresh, state, f"lr_schedulers[{i}]", subset=True)
                for key in SCHEDULE_LENGTH:
                    if key in state and state[key] != fresh.get(key):
                        raise s.Invalid(f"lr_schedulers[{i}].{key} is {s.show(state[key])} where this run's "
                                        f"schedule has {s.show(fresh.get(key))} (trainer.max_epochs, the data or "
                                        "the scheduler changed)")
            for i, (optimizer, state) in enumerate(zip(trainer.optimizers, self.copy.get("optimizer_states", []),
                                                       strict=False)):
                for j, (group, saved) in enumerate(zip(optimizer.state_dict()["param_groups"],
                                                       state["param_groups"], strict=True)):
                    same_layout(group, saved, f"optimizer_states[{i}].param_groups[{j}]", subset=True)
        except s.Invalid as err:
            raise MedclassError(f"{self.source}: {err}{advice}") from None
