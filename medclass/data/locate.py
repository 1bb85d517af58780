"""Find a dataset file on disk, or download it when the network allows.

Search order: the explicit root (config), then ``$MEDCLASS_DATA/<subdir>``, then the library's
default folder. A missing file is downloaded (MD5-checked) into the first of those that exists or
whose parent does; offline, the run stops with one message naming the file, every place searched
and how to provide it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medclass.utils.errors import MedclassError

log = logging.getLogger("medclass")

DATA_ENV = "MEDCLASS_DATA"


def candidate_dirs(root: str | os.PathLike | None, subdir: str, default: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if root:
        dirs.append(Path(root).expanduser())
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser() / subdir)
    if default:
        dirs.append(Path(default).expanduser())
    return dirs


def find_or_download(
    filename: str,
    dirs: list[Path],
    url: str | None = None,
    md5: str | None = None,
    download: bool = True,
) -> Path:
    for folder in dirs:
        if (folder / filename).is_file():
            return folder / filename
    searched = ", ".join(str(d) for d in dirs) or "(no folder configured)"
    hint = (
        f"put {filename} in one of those folders, set data.root=<folder>, "
        f"or set {DATA_ENV}=<folder holding medmnist/ and the folder datasets>"
    )
    if not (download and url and dirs):
        raise MedclassError(f"{filename} not found in: {searched}; {hint}")
    # the first folder that exists or could (its parent exists): a stale $MEDCLASS_DATA is passed over
    target = next((d for d in dirs if d.exists() or d.parent.exists()), dirs[0])
    try:
        from filelock import FileLock
        from torchvision.datasets.utils import download_url

        target.mkdir(parents=True, exist_ok=True)
        # DDP ranks (or two runs) asking at once: one downloads, the others wait and find the file
        with FileLock(str(target / f".{filename}.lock")):
            if not (target / filename).is_file():
                log.info("downloading %s from %s into %s", filename, url, target)
                download_url(url, str(target), filename=f"{filename}.part", md5=md5)
                (target / f"{filename}.part").replace(target / filename)  # never seen half-written
    except Exception as err:  # offline, proxy, disk: every cause ends in the same advice
        (target / f"{filename}.part").unlink(missing_ok=True)
        raise MedclassError(
            f"{filename} not found in: {searched}; download from {url} failed "
            f"({type(err).__name__}: {err}); {hint}"
        ) from err
    return target / filename
