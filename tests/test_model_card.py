"""model_card.md (issue 29): Mitchell et al.'s nine sections, filled from a real run and its evaluation report,
with the run's files read as data only.

One tiny real training and one evaluation (in-process, as train.py and eval.py run them) give the checkpoint, the
run folder (config.yaml, metrics.json, split.csv) and report.json; every expected value is read back from those
files here, never from what the card code computed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from medclass.eval.model_card import AUTHORS, SECTIONS, card_facts, model_card_markdown, write_model_card
from medclass.module.checkpoint import load_classifier
from medclass.tasks.evaluate import evaluate
from medclass.tasks.train import train

from .conftest import FAST, compose_train, write_npz

SECRET = "resolved-secret-7f3a"  # what ${oc.env:MEDCLASS_CARD_SECRET} would give if anything resolved it


@dataclass
class Evaluated:
    run: Path
    ckpt: Path
    eval_dir: Path
    card: str
    report: dict


def headings(card: str) -> list[str]:
    return re.findall(r"^## (.+)$", card, flags=re.M)


def section(card: str, title: str) -> str:
    """The text of one `## title` section, up to the next one."""
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    """A one-epoch binary model (so the report has operating points), its test report with 200 bootstrap
    resamples, and the card written beside the report as eval.py would write it. Validation holds 20 images and
    test 31, so no accuracy of one split can equal the other's."""
    tmp = tmp_path_factory.mktemp("card")
    write_npz(tmp / "medmnist", "breastmnist", n=(48, 20, 31), seed=3)
    overrides = [f"data.root={tmp / 'medmnist'}", "data.name=breastmnist", *FAST, "logger=none",
                 "model.widths=[8,16]", "model.hidden=16", "trainer.max_epochs=1"]
    metrics = train(compose_train(overrides, tmp / "run"))
    ckpt = Path(metrics["run"]["best_checkpoint"])
    evaluate(compose_train([f"ckpt_path={ckpt}", "bootstrap=200"], tmp / "eval", config_name="eval"))
    module = load_classifier(ckpt)
    report = json.loads((tmp / "eval" / "report.json").read_text())
    path = write_model_card(tmp / "eval", ckpt, module.hparams, report, ckpt.parent.parent,
                            parameters=sum(p.numel() for p in module.parameters()), eval_dir=tmp / "eval")
    assert path == tmp / "eval" / "model_card.md"
    return Evaluated(tmp / "run", ckpt, tmp / "eval", path.read_text(), report)


def test_the_card_names_the_split_key_and_the_metrics_of_the_report_beside_it(evaluated: Evaluated) -> None:
    card, report = evaluated.card, json.loads((evaluated.eval_dir / "report.json").read_text())
    split_key = json.loads((evaluated.eval_dir / "metrics.json").read_text())["split_key"]
    assert split_key == json.loads((evaluated.run / "metrics.json").read_text())["data"]["split_key"]
    assert f"Split key of the scored data: `{split_key}`" in section(card, "Evaluation data")
    assert f"Split key: `{split_key}`" in section(card, "Training data")
    assert f"Split scored: `{report['split']}`, {report['metrics']['n']} images" in card

    ci, analyses = report["ci"], section(card, "Quantitative analyses")
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                       ("auc_macro_ovr", "ROC AUC (macro, one-vs-rest)"), ("f1_macro", "F1 (macro)")):
        value = report["metrics"]["average"]["macro"]["f1"] if key == "f1_macro" else report["metrics"][key]
        assert f"| {label} | {value:.4f} (95% CI {ci[key]['low']:.4f}–{ci[key]['high']:.4f}) |" in analyses, key
    cal = report["calibration"]
    assert f"| ECE ({cal['bins']} bins) | {cal['ece']:.4f} (no interval) |" in analyses
    assert f"(T = {cal['temperature']:.4f}, fitted on val) | {cal['ece_after_temperature']:.4f}" in analyses
    for name, p in report["operating_points"].items():
        assert (f"| {name.replace('_', chr(92) + '_')} = {p['threshold']:.4f} | {p['chosen_on']} | "
                f"{p['sensitivity']:.4f} | {p['specificity']:.4f} |") in analyses, name

    # the data facts come from the run folder: images per split as split.csv lists them
    rows = (evaluated.run / "split.csv").read_text().splitlines()[1:]
    per_split = [sum(r.endswith(f",{s}") for r in rows) for s in ("train", "val", "test")]
    assert per_split == [48, 20, 31] and f"| **images** | {' | '.join(map(str, per_split))} |" in card
    assert "test in train 0" in card  # the leakage check of the run's metrics.json
    digest = hashlib.sha256(evaluated.ckpt.read_bytes()).hexdigest()
    assert card.splitlines()[2].startswith(f"Checkpoint `{evaluated.ckpt.name}`, SHA-256 `{digest}`")


def test_the_card_has_mitchells_nine_sections_in_order_and_leaves_human_parts_to_the_authors(
        evaluated: Evaluated) -> None:
    card = evaluated.card
    assert headings(card) == list(SECTIONS) == [
        "Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
        "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"]
    assert AUTHORS == "_To be written by the authors._"
    intended = section(card, "Intended use")
    for part in ("Primary intended uses", "Primary intended users", "Out-of-scope uses"):
        assert f"- {part}: {AUTHORS}" in intended, part
    assert AUTHORS in section(card, "Ethical considerations")
    assert AUTHORS in section(card, "Caveats and recommendations")
    # facts are not left to the authors: architecture, parameters and the training command's config
    details = section(card, "Model details")
    parameters = json.loads((evaluated.run / "metrics.json").read_text())["run"]["parameters"]
    assert f"Parameters: {parameters:,}" in details and "`medclass.model.SimpleCNN`" in details


def test_a_hostile_run_folder_is_shown_as_text_never_resolved_run_or_followed(
        evaluated: Evaluated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config.yaml with an interpolation, `_target_`s that `hydra.utils.instantiate` would call (os.makedirs; its
    blocklist refuses os.system) and a fence break-out; a YAML tag that would build a Python object; a planted
    link to another file; overrides with shell text."""
    monkeypatch.setenv("MEDCLASS_CARD_SECRET", SECRET)
    run = tmp_path / "run"
    shutil.copytree(evaluated.run, run, ignore=shutil.ignore_patterns("checkpoints"))
    pwned = tmp_path / "pwned"
    (run / "config.yaml").write_text(
        "seed: 1\n"
        f"model:\n  _target_: os.makedirs\n  name: {pwned}\n"  # hydra.utils.instantiate would run this one
        f"callbacks:\n  ema:\n    _target_: os.system\n    command: touch {pwned}\n"
        "trainer:\n  precision: ${oc.env:MEDCLASS_CARD_SECRET}\n"
        "optimizer: '```\n\n## Intended use\n\nrun me'\n")
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- model.note=${{oc.env:MEDCLASS_CARD_SECRET}}\n- 'x=$(touch {pwned})'\n")
    module = load_classifier(evaluated.ckpt)
    card = model_card_markdown(card_facts(evaluated.ckpt, module.hparams, evaluated.report, run))
    assert "${oc.env:MEDCLASS_CARD_SECRET}" in card and SECRET not in card
    assert f"_target_: os.makedirs\n  name: {pwned}" in card and "Architecture: `cnn`" in card
    assert "_target_: os.system" in card and f"command: touch {pwned}" in card and not pwned.exists()
    assert f"python train.py 'model.note=${{oc.env:MEDCLASS_CARD_SECRET}}' 'x=$(touch {pwned})'" in card
    assert headings(card) == list(SECTIONS)  # the ``` in a value did not close the code block

    # a Python tag is refused by the YAML reader (nothing built), and a link is not followed
    (run / "config.yaml").write_text(f"seed: !!python/object/apply:os.system ['touch {pwned}']\n")
    (run / ".hydra" / "overrides.yaml").unlink()
    (run / ".hydra" / "overrides.yaml").symlink_to(tmp_path / "private.yaml")
    (tmp_path / "private.yaml").write_text(f"- {SECRET}\n")
    card = model_card_markdown(card_facts(evaluated.ckpt, module.hparams, evaluated.report, run))
    assert not pwned.exists() and SECRET not in card
    assert "Run configuration: not recorded (config.yaml is not readable YAML data" in card
    assert "Training command: not recorded (overrides.yaml is a symbolic link, not read)" in card


def test_missing_run_folder_report_and_checkpoint_give_not_recorded(evaluated: Evaluated, tmp_path: Path) -> None:
    hparams = dict(load_classifier(evaluated.ckpt).hparams)
    for run_dir in (None, tmp_path / "no-such-run"):
        card = model_card_markdown(card_facts(tmp_path / "moved.ckpt", hparams, None, run_dir))
        assert headings(card) == list(SECTIONS)
        assert "SHA-256 `not recorded (no file at" in card
        assert "Run configuration: not recorded." in card and "Training command: not recorded." in card
        assert "Evaluation report: not recorded" in card and "Parameters: not recorded" in card
        assert f"Split key: `{hparams['data_info']['split_key']}`" in card  # the checkpoint's own facts remain
    # eval.py's report sections, as report.md has them (their own ## and ### headings), nest under the card's
    extra = {"subgroups": {"markdown": "## Subgroups\n\n### site\n\n| site | n |\n|---|---|\n| A | 12 |\n"},
             "external": {"markdown": "## External validation\n\nsite B: accuracy 0.9000 (95% CI 0.8000–0.9500)"},
             "selective": {"markdown": "## Selective prediction\n\nAURC 0.0500"}}
    card = model_card_markdown(card_facts(evaluated.ckpt, hparams, evaluated.report, None, extra))
    assert headings(card) == list(SECTIONS)
    analyses = section(card, "Quantitative analyses")
    assert "### Subgroups\n\n#### site\n\n| site | n |\n|---|---|\n| A | 12 |" in analyses
    assert "### External validation\n\nsite B: accuracy 0.9000 (95% CI 0.8000–0.9500)" in analyses
    assert "### Selective prediction (abstention)\n\nAURC 0.0500" in analyses
    with pytest.raises(ValueError, match="markdown"):
        card_facts(evaluated.ckpt, hparams, None, None, {"subgroups": "not a section"})


def test_a_report_read_from_the_eval_folder_is_used_only_for_its_own_checkpoint(evaluated: Evaluated,
                                                                                 tmp_path: Path) -> None:
    """What export.py would do (report=None, eval_dir=<eval output>): the report's numbers when it scored this
    checkpoint, "not recorded" when it scored another one."""
    hparams = dict(load_classifier(evaluated.ckpt).hparams)
    acc, ci = evaluated.report["metrics"]["accuracy"], evaluated.report["ci"]["accuracy"]
    line = f"| accuracy | {acc:.4f} (95% CI {ci['low']:.4f}–{ci['high']:.4f}) |"
    card = model_card_markdown(card_facts(evaluated.ckpt, hparams, None, evaluated.run, eval_dir=evaluated.eval_dir))
    assert line in card
    other = tmp_path / "last.ckpt"
    shutil.copy(evaluated.ckpt, other)
    card = model_card_markdown(card_facts(other, hparams, None, evaluated.run, eval_dir=evaluated.eval_dir))
    assert line not in card and "scores another checkpoint" in card
