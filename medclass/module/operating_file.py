"""What eval.py fitted on validation, saved beside the checkpoint for predict.py and export.py.

`<checkpoint>.operating.json` holds the temperature (calibrated confidences), for binary tasks the
thresholds chosen on validation (Youden's J, a target sensitivity), and, when eval.py was given
`abstain.accuracy` or `abstain.coverage`, the confidence below which predict.py refers an image to a
human (`abstain`: the threshold on the uncalibrated confidence, its target and what it kept on
validation). It is read as data, through `medclass.untrusted.files` (a regular file of at most 1 MiB,
never a FIFO, device or link): the
temperature must be a finite number in [0.01, 100] and each threshold a finite number in [0, 1] under a
plain name, or the command stops with one line (a NaN threshold would otherwise call every image
positive). It is written through `medclass.utils.io`, so a link planted at its name is replaced, not
followed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medclass.utils import schema as s
from medclass.utils.io import write_json

log = logging.getLogger("medclass")
MAX_BYTES = 2**20
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # eval fits within [0.05, 20]; 5e-324 would make every p NaN

VALUES = s.record({
    "temperature": s.optional(s.number(MIN_TEMPERATURE, MAX_TEMPERATURE)),
    "thresholds": s.optional(s.mapping(s.text(64, r"[A-Za-z0-9_.]+", "a threshold name such as youden"),
                                       s.number(0, 1), 64)),
    "checkpoint": s.text(1024), "fitted_on": s.choice("val"), "split_key": s.text(200),
    "abstain": s.optional(s.record({"threshold": s.number(0, 1), "target": s.choice("accuracy", "coverage"),
                                    "value": s.number(0, 1), "val_coverage": s.number(0, 1),
                                    "val_accuracy": s.optional(s.number(0, 1)), "reached": s.boolean},
                                   required=("threshold", "target", "value"))),
})


def path_for(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".operating.json")


def check(payload: Any, source: str) -> dict[str, Any]:
    """`{"temperature": T or None, "thresholds": {...}, "abstain": {...} or None}` from a payload read from a file;
    one error line else."""
    data = s.read_as_data(VALUES, payload, source, "delete it or run eval.py again")
    return {"temperature": data.get("temperature"), "thresholds": dict(data.get("thresholds") or {}),
            "abstain": dict(data["abstain"]) if data.get("abstain") else None}


def check_existing(checkpoint: str | Path) -> None:
    """Before eval.py computes anything: a file it would replace must be one it wrote (or none), so nothing
    planted or damaged beside a checkpoint is overwritten without a word."""
    try:
        load(checkpoint)
    except s.Invalid as err:
        raise s.Invalid(f"{err}; eval.py does not overwrite a file it cannot read as its own") from None


def save(checkpoint: str | Path, temperature: float | None, thresholds: dict[str, float], split_key: str,
         abstain: dict[str, Any] | None = None) -> None:
    """Write the file (replacing an earlier evaluation's: the same checkpoint and validation split give the same
    numbers); a read-only checkpoint folder is reported, not fatal."""
    payload = {"checkpoint": Path(checkpoint).name, "fitted_on": "val", "split_key": split_key,
               "temperature": temperature, "thresholds": thresholds, "abstain": abstain}
    check(payload, "the fitted values")  # never write what load() would refuse
    path = path_for(checkpoint)
    try:
        write_json(path, payload, sort_keys=False)
        log.info("saved the temperature and thresholds for predict.py and export.py: %s", path)
    except OSError as err:
        log.warning("could not save %s (%s): predict.py will use uncalibrated confidences", path, err)


def load(checkpoint: str | Path, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checked values of the file beside `checkpoint`; `default` (or {}) when there is none. A symbolic
    link at its name is refused: eval.py writes a plain file there, so a link was planted."""
    from medclass.untrusted.files import read_json

    path = path_for(checkpoint)
    if path.is_symlink():
        raise s.Invalid(f"{path} is a symbolic link, not the file eval.py writes; refusing to read or replace it "
                        "(delete it, then run eval.py again)")
    if not path.exists():
        return dict(default or {})
    # a regular file of at most 1 MiB (eval.py writes under 2 KB), never a FIFO or device: one line naming it
    return check(read_json(path, "the operating file", MAX_BYTES, follow_links=False), str(path))
