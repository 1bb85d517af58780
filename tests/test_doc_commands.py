"""Every command in README.md and docs/ runs as typed (issue 26): parsed as the shell would, then through
the command line's own checks and Hydra's composition, job by job for `-m` sweeps.

A command is any line of a fenced code block, or any inline code span, that runs `medclass-<command>`
or `python train.py|eval.py|predict.py|export.py` (after `VAR=value` prefixes and `&&`). Placeholders
(`<ckpt>`, `<run>`, `<date>_<time>`) are filled with real paths and `~` is a temporary home folder, so
what is checked is what a user would type with their own paths. Composition needs no data, so every
command is checked in well under a second.

Commands that train on the user's own data (a folder or a manifest under `~`, the chest X-rays under
`$MEDCLASS_DATA`) also run (issue 35): the data they name is built, tiny, with the file names the docs
describe, and the command runs as typed through train.py with `debug=fast` and small images added. The
chest X-ray patient split (its regex once refused by the command line's own check) runs in the default
suite; the others are marked slow.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from medclass.utils import cli

from .conftest import CONF, ROOT, clean_tree, grey, run_script, save
from .test_untrusted_input import CHEST_REGEX, kermany_folder

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict", "export.py": "export"}
COMMANDS = {f"medclass-{name}": name for name in ("train", "eval", "predict", "export")}
# a command at the start of the text (after VAR=value prefixes) or after && or ;
STARTS = re.compile(r"(^|&&|;)\s*([A-Za-z_]\w*=\S*\s+)*(medclass-(train|eval|predict|export|gather)\b|"
                    r"python3? (train|eval|predict|export)\.py\b)")
PLACEHOLDER = re.compile(r"<([^<>]+)>")


def documented_commands() -> list[tuple[str, str]]:
    """(file:line, command text) for every documented command, fenced or inline."""
    found = []
    for doc in DOCS:
        fenced, lines = False, doc.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced and line.rstrip().endswith("\\"):  # a continued command: read as one line
                continue
            while fenced and number > 1 and lines[number - 2].rstrip().endswith("\\"):
                number -= 1
                line = lines[number - 1].rstrip()[:-1] + " " + line
            # inline, a bare name (`medclass-gather`) names a command rather than running one
            candidates = [line] if fenced else [t for t in re.findall(r"`([^`]+)`", line) if " " in t.strip()]
            for text in candidates:
                if STARTS.search(text):
                    found.append((f"{doc.relative_to(ROOT)}:{number}", text.strip()))
    return found


FOUND = documented_commands()


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """(command, argv) for each medclass invocation in a shell line: quotes and comments as the shell reads
    them, `&&` / `;` / `|` separating commands, `VAR=value` prefixes dropped."""
    text = PLACEHOLDER.sub(lambda m: "PH_" + re.sub(r"\W+", "_", m.group(1)).strip("_"), text)
    tokens = [os.path.expandvars(t) for t in shlex.split(text, comments=True)]
    tokens = [t for t in tokens if t != "..." and not re.fullmatch(r"PH_\w*", t)]  # "<same overrides>", "..."
    out, segment = [], []
    for token in [*tokens, "&&"]:
        if token not in ("&&", ";", "|", "||"):
            segment.append(token)
            continue
        while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
            segment.pop(0)
        if segment and segment[0] in (*COMMANDS, "medclass-gather"):
            out.append((segment[0], segment[1:]))
        elif len(segment) > 1 and segment[0] in ("python", "python3") and segment[1] in SCRIPTS:
            out.append((segment[1], segment[2:]))
        segment = []
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's home, with the own-config folder docs/configuration.md builds before its command."""
    home = tmp_path_factory.mktemp("home")
    (home / "study" / "conf" / "experiment").mkdir(parents=True)
    (home / "study" / "conf" / "experiment" / "glioma.yaml").write_text("# @package _global_\n")
    return home


def filled(argv: list[str], home: Path) -> list[str]:
    """Relative output paths under the temporary home (placeholders are plain names by now)."""
    return [arg.replace("=outputs/", f"={home}/outputs/") for arg in argv]


@pytest.mark.parametrize(("where", "text"), FOUND, ids=[w for w, _ in FOUND])
def test_a_documented_command_runs_as_typed(where: str, text: str, home: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    calls = invocations(text)
    assert calls, f"{where}: no medclass command found in {text!r}"
    for command, argv in calls:
        argv = filled(argv, home)
        if command == "medclass-gather":
            from medclass.tasks.gather import parser

            parser().parse_args(argv)
            continue
        config = COMMANDS.get(command) or SCRIPTS[command]
        argv = cli.as_meant(argv)
        try:
            cli.check_command_line(argv)
        except SystemExit:
            pytest.fail(f"{where}: {text}\n{capsys.readouterr().err}")
        given, multirun = cli.hydra_overrides(argv)
        overrides = OverridesParser.create().parse_overrides(given)
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch] \
            if multirun else [given]
        for job in jobs:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose(config_name=config, overrides=job, return_hydra_config=True)
            assert "~" not in str(cfg.get("data", {}).get("root") or ""), f"{where}: ~ reached the config"


def test_the_docs_hold_the_commands_this_test_checks() -> None:
    """How many were checked, so a change in the collection shows; the README's first command included."""
    print(f"{len(FOUND)} documented commands checked, from {len(DOCS)} files")
    assert len(FOUND) >= 60
    assert any(w.startswith("README.md") and "medclass-train" in t and "pip install" in t for w, t in FOUND)


@pytest.mark.parametrize(("argv", "message"), [
    (["data=folder", r"data.group_by=(P\d+)_"],
     r"""^error: cannot read the override 'data.group_by=\(P\\d\+\)_' \(extraneous input '\('\); quote the value """
     r"""inside the override, as 'data.group_by="\(P\\d\+\)_"'$"""),
    (["seed=1,2"], r"^error: 'seed=1,2' is a sweep: add -m to run one job per value"),
])
def test_an_override_hydra_cannot_read_is_one_line_with_the_quoting(argv: list[str], message: str,
                                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.check_command_line(argv)
    err = capsys.readouterr().err
    assert raised.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err.strip()), err


def test_a_home_folder_path_is_expanded_before_hydra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.expand_home(["data.root=~/xray", "inputs=~", "x=a~b", "-m", "~"]) == [
        f"data.root={tmp_path}/xray", f"inputs={tmp_path}", "x=a~b", "-m", "~"]


# -- documented commands with data options run on tiny data --------------------------------------------------------
def patient_folders(root: Path) -> Path:
    """Class folders whose file names carry the patient, as README's `(P\\d+)_` expects: glioma/P0012_axial_03.png."""
    for c, name in enumerate(("glioma", "meningioma")):
        for p in range(8):
            for k in range(2):
                save(root / name / f"P{100 * c + p:04d}_axial_{k:02d}.png", grey(50 + 120 * c, 16, 10 * p + k))
    return root


def study_manifest(path: Path) -> Path:
    """A manifest as docs/data.md shows it: path (relative to the CSV), label, group, split."""
    rows = []
    for c, label in enumerate(("glioma", "meningioma")):
        for p in range(8):
            for k in range(2):
                rel = f"images/P{100 * c + p:04d}_axial_{k:02d}.png"
                save(path.parent / rel, grey(50 + 120 * c, 16, 10 * p + k))
                rows.append([rel, label, f"P{100 * c + p:04d}", ""])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "group", "split"], *rows])
    return path


def chest_xray_folders(root: Path) -> Path:
    clean_tree(root / "train", ("NORMAL", "PNEUMONIA"), per_class=10)
    clean_tree(root / "test", ("NORMAL", "PNEUMONIA"), per_class=4)
    return root


# the data a documented command names (after ~ and $MEDCLASS_DATA are expanded), and how to build it tiny
TINY_DATA: dict[str, Callable[[Path], Path]] = {
    "~/xray": patient_folders,
    "~/study/labels.csv": study_manifest,
    "~/chest_xray/train": chest_xray_folders,  # its test_root, ~/chest_xray/test, comes with it
    "~/scans": lambda root: clean_tree(root),
    "$MEDCLASS_DATA/chest_xray_kermany": kermany_folder,
}
PREFIX = re.compile(r"^((?:[A-Za-z_]\w*=\S*\s+)*)(?:medclass-train|python3? train\.py)\s")


def data_commands() -> list[tuple[str, str, str]]:
    """(file:line, command text, the data key) for every documented single train command on data TINY_DATA builds."""
    found = []
    for where, text in FOUND:
        if not PREFIX.search(text) or " -m " in f" {text} ":
            continue
        named = [key for key in TINY_DATA if re.search(rf"data\.(root|manifest)={re.escape(key)}(\s|$)", text)]
        if named:
            found.append((where, text, named[0]))
    return found


DATA_COMMANDS = data_commands()


def test_the_documented_data_commands_are_found() -> None:
    keys = {key for _, _, key in DATA_COMMANDS}
    assert keys == set(TINY_DATA), keys
    assert any(CHEST_REGEX in text for _, text, _ in DATA_COMMANDS)


@pytest.mark.parametrize(("where", "text", "key"), [
    pytest.param(*c, id=c[0], marks=[] if CHEST_REGEX in c[1] else [pytest.mark.slow]) for c in DATA_COMMANDS])
def test_a_documented_data_command_trains_on_tiny_data(where: str, text: str, key: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The command as the shell reads it (quotes, `VAR=value` prefixes, `$MEDCLASS_DATA`, `~`), run by train.py
    on tiny data at the paths it names; the chest X-ray regex must group the Kermany file names by patient."""
    home, data = tmp_path / "home", tmp_path / "data"
    env = {"HOME": str(home), "MEDCLASS_DATA": str(data)}
    target = Path(key.replace("~", str(home)).replace("$MEDCLASS_DATA", str(data)))
    for folder in (home, target.parent):
        folder.mkdir(parents=True, exist_ok=True)
    TINY_DATA[key](target.parent if key == "~/chest_xray/train" else target)
    prefix = PREFIX.search(text)
    assert prefix is not None
    env.update(dict(item.split("=", 1) for item in prefix.group(1).split()))  # MEDCLASS_MAX_IMAGE_MB=1024 ...
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # what the shell expands ($MEDCLASS_DATA), as invocations() reads it
    [(command, argv)] = invocations(text)
    script = command if command in SCRIPTS else f"{COMMANDS[command]}.py"
    run = tmp_path / "run"
    proc = run_script(script, *argv, "debug=fast", "data.image_size=16", "trainer.max_epochs=1",
                      f"hydra.run.dir={run}", cwd=home, env=env)
    assert proc.returncode == 0, f"{where}: {text}\n{proc.stderr[-3000:]}"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"], where
    if CHEST_REGEX in text:  # one group per patient, and no patient in two splits
        with (run / "split.csv").open(newline="") as f:
            groups = {row["path"].split("/")[-1]: row["group"] for row in csv.DictReader(f)}
        assert groups["NORMAL2-IM-0246-0001.jpeg"] == "NORMAL2-IM-0246" and groups["IM-0011-0001.jpeg"] == "IM-0011"
        assert groups["person102_bacteria_483.jpeg"] == groups["person102_bacteria_484.jpeg"] == "person102"
        assert metrics["data"]["groups_across_splits"] == {"val_and_train": 0, "test_and_train": 0, "test_and_val": 0}
