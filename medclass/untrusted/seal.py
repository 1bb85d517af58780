"""Whose data paths a model file may name: a seal only this account's medclass can make.

A model file describes the data it was trained on, paths included (`root`, `test_root`, `manifest`,
`input_dir`), so that `medclass-eval ckpt_path=<run>/checkpoints/best.ckpt` needs nothing else.
Those paths are the file's author's, not the user's: a stranger's checkpoint naming
`manifest=/proc/self/environ` or `root=~/.ssh` must not make medclass read there. So medclass seals
the data description of every checkpoint it writes with an HMAC-SHA256 under a random key kept in
this account (`$MEDCLASS_HOME/seal.key`, default `~/.config/medclass/seal.key`, mode 0600, made on
first use). `eval.py` reads paths from a model file only when the seal verifies; any other file's
paths are ignored, and the user names the data on the command line (`data.root=`, `data.manifest=`).

Only the paths depend on this; a file without a valid seal is otherwise read as before, so sharing
a model still works, and a lost key costs one `data.root=` on the command line, nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medclass.utils.io import create_new

log = logging.getLogger("medclass")
KEY_BYTES = 32
PATH_KEYS = ("root", "test_root", "manifest", "input_dir")  # what a data description names on disk


def key_file() -> Path:
    home = os.environ.get("MEDCLASS_HOME") or Path.home() / ".config" / "medclass"
    return Path(home).expanduser() / "seal.key"


def _key(create: bool) -> bytes | None:
    """This account's key; made (0600, never replacing one) when `create` and missing; None when it cannot be had."""
    path = key_file()
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if len(data) == KEY_BYTES:
            return data
    if not create:
        return None
    try:
        create_new(path, secrets.token_bytes(KEY_BYTES))  # never replaces a key another process made first
    except OSError as err:
        log.warning("cannot keep a seal key at %s (%s): checkpoints from this run will need data.root= (or "
                    "data.manifest=) to be evaluated; set MEDCLASS_HOME to a writable folder", path, err.strerror)
        return None
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if len(data) == KEY_BYTES:
            return data
    return None


def _message(description: Mapping[str, Any]) -> bytes:
    return json.dumps(description, sort_keys=True, separators=(",", ":"), default=str).encode()


def seal(description: Mapping[str, Any] | None) -> str | None:
    """The seal of a data description, as a hex string (None without a description or a key)."""
    key = _key(create=True) if description else None
    return hmac.new(key, _message(description), hashlib.sha256).hexdigest() if key and description else None


def verify(description: Mapping[str, Any] | None, tag: Any) -> bool:
    """Whether `tag` is this account's seal of `description` (constant-time comparison)."""
    if not description or not isinstance(tag, str):
        return False
    key = _key(create=False)
    expected = hmac.new(key, _message(description), hashlib.sha256).hexdigest() if key else ""
    return bool(key) and hmac.compare_digest(expected, tag)


def named_paths(description: Mapping[str, Any]) -> dict[str, str]:
    """The paths a data description names (root, test_root, manifest, input_dir), when set."""
    return {k: str(description[k]) for k in PATH_KEYS if description.get(k)}

