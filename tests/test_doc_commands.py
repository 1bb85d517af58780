"""Every command in README.md and docs/ runs as typed (issue 26): parsed as the shell would, then through
the command line's own checks and Hydra's composition, job by job for `-m` sweeps.

A command is any line of a fenced code block, or any inline code span, that runs `medclass-<command>`
or `python train.py|eval.py|predict.py|export.py` (after `VAR=value` prefixes and `&&`). Placeholders
(`<ckpt>`, `<run>`, `<date>_<time>`) are filled with real paths and `~` is a temporary home folder, so
what is checked is what a user would type with their own paths. Composition needs no data, so every
command is checked in well under a second; what the jobs then do is the rest of the suite's business.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from medclass.utils import cli

from .conftest import CONF, ROOT

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
        args = get_args_parser().parse_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch] \
            if args.multirun else [args.overrides]
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
