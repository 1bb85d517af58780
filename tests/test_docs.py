"""The docs hold what they promise: every config group and option in docs/configuration.md (the
generated reference up to date), and every relative link in README and docs/ resolving, anchors too."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .conftest import CONF, ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def reference_tool():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_md_names_every_group_and_option_and_is_current() -> None:
    tool = reference_tool()
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert tool.updated(text) == text, "run: python tools/config_reference.py"
    files = sorted(CONF.rglob("*.yaml"))
    assert len(files) > 40
    for path in files:
        group = path.parent.relative_to(CONF).as_posix()
        if group != ".":
            assert f"`{group.split('/')[0]}`" in text and f"{group}={path.stem}" in text
        if group.split("/")[0] in tool.PRESETS:  # they set other groups' options: listed by purpose
            continue
        for key, _, _ in tool.options(path):
            assert f"`{key}`" in text, f"{path}: option {key} is not in docs/configuration.md"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_every_relative_link_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # http(s), mailto: not ours to check offline
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            assert dest.exists(), f"{page.name}: link {target} points at nothing"
            if anchor:
                assert anchor in anchors(dest), f"{page.name}: link {target}: no heading #{anchor} in {dest.name}"
            checked += 1
    assert checked > 20


def test_the_documented_user_config_folder_is_found_through_hydra_searchpath(tmp_path: Path) -> None:
    """docs/configuration.md "Your own configs": a user's experiment/ beside the shipped groups."""
    from .conftest import compose_train

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "glioma.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: manifest\n  - override /model: efficientnet_lite0\n"
        "data:\n  manifest: ~/study/labels.csv\n  image_size: 128\ntrainer:\n  max_epochs: 20\n")
    cfg = compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=glioma"], tmp_path / "run")
    assert cfg.data._target_ == "medclass.data.ManifestDataModule" and cfg.data.image_size == 128
    assert cfg.model.name == "tf_efficientnet_lite0" and cfg.trainer.max_epochs == 20
    assert "file://$HOME/study/conf" in (ROOT / "docs" / "configuration.md").read_text()
