"""eval.py's options, read once from the composed config into one typed object.

conf/eval.yaml holds each option's one default and its documentation; code reads them only through
`EvalOptions`, never with a default of its own, so an option means the same in every part of the report.
`bootstrap` is the number of resamples for every interval (the report's metrics, subgroups and external
validation); 0 turns intervals off everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medclass.module.hparams import to_plain
from medclass.utils.errors import MedclassError


def _whole(cfg: DictConfig, key: str, least: int) -> int:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise MedclassError(f"{key}={value!r}: expected a whole number, at least {least}")
    return value


def _fraction(cfg: DictConfig, key: str, optional: bool = False) -> float | None:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise MedclassError(f"{key}={value!r} is not a number in (0, 1]; e.g. {key}=0.9")
    return float(value)


@dataclass(frozen=True)
class EvalOptions:
    """What eval.py scores and reports (docs/evaluation.md): each field is the eval.yaml option of the same name
    (`sensitivity` is `operating_point.sensitivity`, `abstain_*` and `external_*` the nested ones)."""

    split: str
    tta: str | None
    split_check: bool
    report: bool
    calibrate: bool
    ece_bins: int
    bootstrap: int  # resamples for every interval; 0: none
    bootstrap_seed: int
    sensitivity: float  # operating_point.sensitivity
    subgroups: tuple[str, ...]
    subgroup_bins: dict[str, Any]
    subgroup_min_count: int
    abstain_accuracy: float | None
    abstain_coverage: float | None
    external_root: str | None
    external_class_map: dict[str, Any] | None
    model_card: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvalOptions:
        """The options of a composed eval config, checked: one error line naming the option and its fix."""
        accuracy = _fraction(cfg, "abstain.accuracy", optional=True)
        coverage = _fraction(cfg, "abstain.coverage", optional=True)
        if accuracy is not None and coverage is not None:
            raise MedclassError("give one of abstain.accuracy and abstain.coverage, not both")
        external = OmegaConf.select(cfg, "external.root", throw_on_missing=True)
        return cls(split=str(cfg.split), tta=cfg.tta, split_check=bool(cfg.split_check), report=bool(cfg.report),
                   calibrate=bool(cfg.calibrate),
                   ece_bins=_whole(cfg, "ece_bins", 1), bootstrap=_whole(cfg, "bootstrap", 0),
                   bootstrap_seed=_whole(cfg, "bootstrap_seed", 0),
                   sensitivity=float(_fraction(cfg, "operating_point.sensitivity") or 0.0),
                   subgroups=tuple(str(c) for c in (cfg.subgroups or [])),
                   subgroup_bins=dict(to_plain(cfg.subgroup_bins) or {}),
                   subgroup_min_count=_whole(cfg, "subgroup_min_count", 1),
                   abstain_accuracy=accuracy, abstain_coverage=coverage,
                   external_root=str(external) if external else None,
                   external_class_map=to_plain(OmegaConf.select(cfg, "external.class_map", throw_on_missing=True)),
                   model_card=bool(cfg.model_card))

    @property
    def abstain_targets(self) -> tuple[float | None, float | None]:
        return self.abstain_accuracy, self.abstain_coverage
