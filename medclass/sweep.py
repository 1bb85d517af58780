"""The one number a Hydra sweeper (Optuna) optimizes, read from train()'s metrics."""

from __future__ import annotations

from typing import Any

from medclass.errors import MedclassError


def optimized_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """`best_val/val/auc` (section/metric), or the short `val/acc` (best_val) and `test/acc` (test).

    None when there is no key or its section was not computed (train=false has no best_val);
    a metric missing from a computed section is a typo, reported as a MedclassError, because a
    sweeper handed None would fail every trial with a long trace.
    """
    if not key:
        return None
    section, _, name = key.partition("/")
    if section == "val" or (section == "test" and not name.startswith("test/")):  # short form: the logged name
        section, name = ("best_val" if section == "val" else "test"), key
    values = metrics.get(section)
    if not isinstance(values, dict):
        return None
    if name not in values:
        choices = ", ".join(f"{s}/{k}" for s, v in metrics.items() if s in ("best_val", "test") for k in v)
        raise MedclassError(f"optimized_metric={key} is not a metric of this run; choose one of: {choices}")
    return float(values[name])
