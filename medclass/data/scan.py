"""Walk a class-per-folder tree: which files are images of which class, and what was left out and why.

Nothing is dropped silently: every file passed over lands in `Scan.skipped` with its reason, and
mistakes that would make the labels wrong (one class, an empty class, one image in two classes)
stop the run with the path and the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from medclass.data.decode import is_image_name
from medclass.untrusted.files import system_path
from medclass.utils.errors import MedclassError

SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


@dataclass
class Scan:
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # class folder names
    digests: list[str] = field(default_factory=list)  # content hashes, to find copies across roots
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # patient / study per file, when known (manifests)
    given: list[str] = field(default_factory=list)  # a split per file fixed by the user (manifests), or ""
    extra: list[dict[str, str]] = field(default_factory=list)  # a manifest's other columns, per file

    def keep(self, index: list[int]) -> None:
        """Keep only the files at `index` (in every per-file list)."""
        for name in ("files", "labels", "digests", "groups", "given", "extra"):
            values = getattr(self, name)
            if values:
                setattr(self, name, [values[i] for i in index])


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _hidden(path: Path, root: Path) -> bool:
    """A dot in any part below `root` (a manifest's absolute path elsewhere: its file name only)."""
    parts = path.relative_to(root).parts if path.is_relative_to(root) else (path.name,)
    return any(part.startswith(".") for part in parts)


def scan_folder(root: Path, what: str = "data.root") -> Scan:
    """Images under `root/<class>/**`, in sorted order; duplicates within a class kept once."""
    if not root.is_dir():
        raise MedclassError(f"{what}={root} is not a folder; point it at a folder with one sub-folder per class")
    if system_path(root):  # /proc, /sys, /dev: files that never end, report size 0, or hold the environment
        raise MedclassError(f"{what}={root} is a system folder, not data; point it at a folder with one sub-folder "
                            "per class")
    scan = Scan()
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise MedclassError(
            f"{what}={root} has {len(classes)} class folder(s); a classifier needs at least 2 "
            "(layout: root/<class>/<image files>)"
        )
    for entry in sorted(root.iterdir()):
        if entry.is_file():
            scan.skipped.append((entry, "not inside a class folder"))
        elif entry.name.startswith("."):
            scan.skipped.append((entry, "hidden folder"))
    seen: dict[str, tuple[Path, str]] = {}
    for class_dir in classes:
        count = 0
        for path in sorted(p for p in class_dir.rglob("*") if not p.is_dir()):  # pipes, devices: skipped, listed
            digest, reason = admit(path, root, class_dir.name, seen)
            if reason:
                scan.skipped.append((path, reason))
                continue
            scan.files.append(path)
            scan.labels.append(class_dir.name)
            scan.digests.append(digest)
            count += 1
        if count == 0:
            raise MedclassError(f"class folder {class_dir} holds no readable images; add images or remove it")
    return scan


def admit(path: Path, root: Path, label: str, seen: dict[str, tuple[Path, str]]) -> tuple[str, str | None]:
    """(content digest, None) for a usable image not seen before, else ("", why it is passed over);
    `seen` maps digests to their first (path, label). The same image under two labels stops the run:
    one of the two labels is wrong."""
    reason = reason_to_skip(path, root)
    if reason:
        return "", reason
    try:
        digest = file_digest(path)
    except OSError as err:
        return "", f"unreadable ({err.strerror or err})"
    if digest in seen:
        first, first_label = seen[digest]
        if first_label != label:
            raise MedclassError(f"the same image is in two classes: {first} and {path}; delete the wrong copy")
        return "", f"duplicate of {first}"
    seen[digest] = (path, label)
    return digest, None


def reason_to_skip(path: Path, root: Path) -> str | None:
    """Why `path` is no image to read (system, hidden, other suffix, empty); None for a candidate image."""
    if path.name.lower() in SYSTEM_FILES:
        return "system file"
    if _hidden(path, root):
        return "hidden file or folder"
    if not is_image_name(path):
        return f"not an image ({path.suffix or 'no suffix'})"
    if not path.is_file():
        return "not a regular file (a pipe, device or broken link)"
    if path.stat().st_size == 0:
        return "empty file"
    return None
