"""The map holds: packages import only the layers below them (so no two packages import each other), no import
cycles between medclass's modules, and every config group's home package named in docs/configuration.md exists
under that name."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from .conftest import CONF, ROOT

PACKAGE = ROOT / "medclass"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each medclass module → the medclass modules it imports anywhere (top level or inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medclass"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("medclass")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


# medclass's packages, bottom to top (docs/development.md "Layout"): each may import those before it, never after
LAYERS = ("utils", "untrusted", "model", "augment", "data", "module", "eval", "callbacks", "logger", "tasks")


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer (or in a package with no layer), as `a -> b`."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = package(source), package(target)
            if low and high and low != high and rank.get(high, len(LAYERS)) > rank.get(low, -1):
                found.append(f"{source} -> {target}")
    return found


def test_packages_import_only_the_layers_below_them() -> None:
    graph = imports()
    assert {package(m) for m in graph} - {""} == set(LAYERS)  # every package has its layer
    assert upward_imports(graph) == []


def test_a_planted_upward_import_is_found() -> None:
    """The check has teeth: the real graph plus one import of a command from the data layer."""
    graph = imports()
    graph["medclass.data.folder"] = {*graph["medclass.data.folder"], "medclass.tasks.predict"}
    assert upward_imports(graph) == ["medclass.data.folder -> medclass.tasks.predict"]


def test_no_import_cycles() -> None:
    graph = imports()
    assert len(graph) > 50 and graph["medclass.tasks.train"]  # the graph was really read
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_each_config_group_names_a_package_that_exists() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text().split("## Where each group lives")[1].split("\n## ")[0]
    rows = dict(re.findall(r"^\| `([\w/]+)` \| `?([\w.]+|none)`? \|", text, re.M))
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert sorted(rows) == groups  # one row per group, no row for a group that is gone
    for group, package in rows.items():
        sentence = next(line for line in text.splitlines() if line.startswith(f"| `{group}` |"))
        assert f"The `{group}` group" in sentence  # the sentence says what the group is
        if package == "none":
            continue
        importlib.import_module(package)  # the package exists under that name
        if package.startswith("medclass."):
            assert package == f"medclass.{group}"  # same name on both sides


def test_the_design_cards_top_level_and_every_package_in_the_wheel() -> None:
    """conf/ sits at the top (the design card), and pyproject lists every package, conf/ mapped in as
    medclass.conf, so a wheel carries them all (tools/install_check.sh installs one)."""
    import tomllib

    for name in ("conf", "medclass", "train.py", "eval.py", "tests", "pyproject.toml", "README.md"):
        assert (ROOT / name).exists(), name
    assert not (ROOT / "medclass" / "conf").exists()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "medclass").rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages | {"medclass.conf"}
    assert setuptools["package-dir"] == {"medclass.conf": "conf"} and (ROOT / "conf" / "__init__.py").is_file()
    assert CONF == ROOT / "conf"
    from medclass.utils.cli import CONF as used

    assert used.resolve() == (ROOT / "conf").resolve()  # this (editable) install reads conf/ itself
