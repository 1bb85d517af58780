"""What eval.py fitted on validation, saved beside the checkpoint for predict.py and export.py.

`<checkpoint>.operating.json` holds the temperature (calibrated confidences) and, for binary tasks,
the thresholds chosen on validation (Youden's J, a target sensitivity). It is plain JSON read as
numbers: nothing in it decides which code runs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from medclass.utils.errors import MedclassError

log = logging.getLogger("medclass")


def path_for(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".operating.json")


def save(checkpoint: str | Path, temperature: float | None, thresholds: dict[str, float], split_key: str) -> None:
    """Write the file (replacing an earlier evaluation's: the same checkpoint and validation split give the same
    numbers); a read-only checkpoint folder is reported, not fatal."""
    payload = {"checkpoint": Path(checkpoint).name, "fitted_on": "val", "split_key": split_key,
               "temperature": temperature, "thresholds": thresholds}
    path = path_for(checkpoint)
    try:
        path.write_text(json.dumps(payload, indent=2))
        log.info("saved the temperature and thresholds for predict.py and export.py: %s", path)
    except OSError as err:
        log.warning("could not save %s (%s): predict.py will use uncalibrated confidences", path, err)


def load(checkpoint: str | Path) -> dict[str, Any]:
    """`{"temperature": T, "thresholds": {...}}` from the file beside `checkpoint`, or {} when there is none."""
    path = path_for(checkpoint)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        temperature = data.get("temperature")
        thresholds = {str(k): float(v) for k, v in (data.get("thresholds") or {}).items()}
        if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                            and temperature > 0):
            raise ValueError(f"temperature {temperature!r}")
    except (ValueError, TypeError, AttributeError) as err:
        raise MedclassError(f"{path} is not an eval.py operating file ({err}); delete it or run eval.py again") from err
    return {"temperature": None if temperature is None else float(temperature), "thresholds": thresholds}
