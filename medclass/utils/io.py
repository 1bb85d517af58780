"""Writing result files so that a reader never sees half of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: dict[str, Any], sort_keys: bool = True) -> None:
    """Written beside, then renamed over `path`: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys))
    tmp.replace(path)
