"""Classify new images from a checkpoint (or an exported ONNX file) alone: `python predict.py`.

Every image goes through the code training used (`decode_resized`, then the eval transform with the
checkpoint's mean/std), so a file scores as it would have inside the data set. Files that cannot be
read are listed with their reason, never fatal; only "no readable image at all" stops the run.

Scoring (batches sized to `memory_mb`, test-time views within `tta_gflop`, outputs checked to be
probabilities) is `medclass.module.scoring`'s, shared with eval.py's external validation; records are
written to predictions.csv/.json as they come, so memory follows the batch, not images x classes.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from medclass.data.decode import read_image
from medclass.data.scan import reason_to_skip
from medclass.eval.calibration import apply_temperature
from medclass.module.scoring import (
    DEFAULT_MEMORY_MB,
    Skipped,
    TorchModel,
    check_described_network,
    check_probabilities,
    scored_batches,
)
from medclass.tasks.prediction_files import Predictions, PredictionWriter
from medclass.untrusted.tables import read_table
from medclass.utils.errors import MedclassError
from medclass.utils.io import write_csv

if TYPE_CHECKING:
    from medclass.module import Classifier

log = logging.getLogger("medclass")

# -- inputs -------------------------------------------------------------------------------------
def _expand(spec: str, columns: dict[Path, dict[str, str]]) -> list[tuple[Path, Path]]:
    """(file, the folder its hidden-ness is judged from) for one file, folder (recursive), glob or CSV of
    inputs; a CSV's other columns land in `columns`, by file."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":  # a manifest: its `path` column, relative to its folder
        listed = read_manifest_inputs(path)
        columns.update(listed)
        return [(file, file.parent) for file in listed]
    if path.is_file():
        return [(path, path.parent)]
    if path.is_dir():
        return [(p, path) for p in sorted(path.rglob("*")) if not p.is_dir()]  # pipes and devices: listed, skipped
    if glob.has_magic(spec):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        return [pair for m in matches for pair in _expand(str(m), columns)]
    raise MedclassError(f"inputs={spec} is no file, folder or glob match; give an image, a folder of images or a "
                        "quoted glob such as 'scans/**/*.png'")


def read_manifest_inputs(manifest: Path) -> dict[Path, dict[str, str]]:
    """A CSV of images to predict (`data=manifest`'s format; `label` optional): each file with the row's
    other columns, which predictions.csv carries beside the prediction. Read through the bounded table reader
    (columns, line length, cells), so a CSV of a million header columns is one error line, not gigabytes."""
    table = read_table(manifest, "inputs")
    if table.index("path") is None:
        raise MedclassError(f"inputs={manifest} has no `path` column ({len(table.columns)} columns); a CSV of inputs "
                            "lists one image per row under `path`")
    listed: dict[Path, dict[str, str]] = {}
    for row in table.rows:
        record = table.record(row)
        path = record.pop("path").strip()
        if path:
            listed[manifest.parent / path] = record
    return listed


def collect_inputs(inputs: str | Path | Sequence[str | Path],
                   columns: dict[Path, dict[str, str]] | None = None) -> tuple[list[Path], list[Skipped]]:
    """Candidate image files (by suffix, any case, .dcm included) and the files passed over with reasons;
    `columns`, when given, receives the other columns of every CSV among the inputs, by file."""
    specs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    columns = {} if columns is None else columns
    found: dict[Path, Path] = {}
    for spec in specs:
        for file, root in _expand(str(spec), columns):
            found.setdefault(file, root)
    if not found:
        raise MedclassError(f"inputs={inputs} matches no file; check the path or the glob pattern")
    files, skipped = [], []
    for file, root in found.items():
        reason = reason_to_skip(file, root)
        if reason:
            skipped.append((file, reason))
        else:
            files.append(file)
    return files, skipped


# -- prediction ---------------------------------------------------------------------------------
def decision_threshold(meta: dict[str, Any], operating_point: str | None) -> tuple[str, float] | None:
    """The binary operating point predict.py calls positives at: the named one, else Youden's J when eval.py
    saved it; None for other tasks or when there is none."""
    thresholds = meta.get("thresholds") or {}
    if meta["task"] != "binary-class" or not thresholds:
        if operating_point:
            raise MedclassError(f"operating_point={operating_point}: this model has no thresholds (binary tasks; run "
                                "eval.py on the checkpoint first, which saves them beside it)")
        return None
    name = operating_point or ("youden" if "youden" in thresholds else next(iter(thresholds)))
    if name not in thresholds:
        raise MedclassError(f"operating_point={name} is not one of this model's thresholds: {', '.join(thresholds)}")
    return name, float(thresholds[name])


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """The indices of the `k` largest values, largest first, ties by index (a stable descending sort), without
    sorting all of them: with 100,000 classes, a partition and a sort of `k`."""
    if k >= len(probs) or len(probs) <= 256:
        return np.argsort(-probs, kind="stable")[:k]
    kth = np.partition(probs, len(probs) - k)[len(probs) - k]  # the k-th largest value
    above = np.flatnonzero(probs > kth)
    chosen = np.concatenate([above, np.flatnonzero(probs == kth)[: k - len(above)]])
    return chosen[np.lexsort((chosen, -probs[chosen]))]


def _record(path: Path, probs: np.ndarray, meta: dict[str, Any], k: int, threshold: float,
            decision: tuple[str, bool] | None = None, refer: bool | None = None) -> dict[str, Any]:
    names = meta["class_names"]
    rounded = np.round(np.asarray(probs, dtype=np.float64), 6)  # one rounding, shared by every field below
    order = top_k(np.asarray(probs), max(1, min(k, len(names))))
    values = rounded.tolist()  # plain floats in one call: 100,000 classes take milliseconds, not seconds
    record: dict[str, Any] = {
        "path": str(path),
        "class": names[order[0]],
        "confidence": values[order[0]],
        "top_k": [{"class": names[i], "probability": values[i]} for i in order],
        "probabilities": dict(zip(names, values, strict=True)),
    }
    if meta["task"] == "multi-label":  # independent labels: every one above the threshold
        record["labels"] = [names[i] for i in np.flatnonzero(probs > threshold)]
    if decision is not None:  # the binary call at the deployed threshold (positive class: the second name)
        record["decision"] = names[1] if decision[1] else names[0]
    if refer is not None:  # selective prediction: below eval.py's abstention threshold, a human decides
        record["decision"] = "refer" if refer else record.get("decision", record["class"])
    return record


def abstain_threshold(meta: dict[str, Any]) -> float | None:
    """The confidence below which an image is referred (eval.py `abstain.*`, saved beside the checkpoint)."""
    abstain = meta.get("abstain") or {}
    return None if meta["task"] == "multi-label" or abstain.get("threshold") is None else float(abstain["threshold"])


def _unique_png(folder: Path, path: Path, used: set[str]) -> Path:
    name, n = f"{path.stem}.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}.png"
    used.add(name)
    return folder / name


def iter_records(
    model: TorchModel | Callable[[torch.Tensor], np.ndarray],
    paths: Sequence[str | Path],
    skipped: list[Skipped],
    batch_size: int = 32,
    k: int = 3,
    threshold: float = 0.5,
    progress: bool = False,
    cam_dir: Path | None = None,
    cam_layer: str | None = None,
    calibrated: bool = True,
    operating_point: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per readable image of `paths`, in order, built a batch at a time (what `predict_images` collects
    and `run_predict` streams to disk); unreadable files are appended to `skipped`."""
    if batch_size < 1 or k < 1:
        raise MedclassError(f"batch_size={batch_size} and k={k} must be at least 1")
    meta = model.meta
    if cam_dir is not None and not isinstance(model, TorchModel):
        raise MedclassError("Grad-CAM needs the network's gradients: predict with ckpt_path=<file.ckpt>, not ONNX")
    temperature = meta.get("temperature") if calibrated else None
    decision = decision_threshold(meta, operating_point)
    refer_below = abstain_threshold(meta)
    source = getattr(model, "source", None) or "the model"
    used: set[str] = set()
    for kept, x, raw in scored_batches(model, paths, batch_size, skipped, progress, cam=cam_dir is not None):
        probs = check_probabilities(apply_temperature(raw, meta["task"], temperature), kept, meta,
                                    source) if temperature else raw
        cams: list[Path | None] = [None] * len(kept)
        if cam_dir is not None:
            from medclass.eval.explain import save_cam_overlays

            cams = [_unique_png(cam_dir, p, used) for p in kept]
            targets = [int(np.argmax(row)) for row in probs]
            save_cam_overlays(model.module.net, x.to(model.device), targets, [read_image(p) for p in kept], cams,
                              layer=cam_layer)
        del x
        for p, row, score, cam in zip(kept, probs, raw, cams, strict=True):
            # thresholds apply to the uncalibrated scores they were chosen on
            record = _record(p, row, meta, k, threshold,
                             None if decision is None else (decision[0], float(score[1]) >= decision[1]),
                             None if refer_below is None else float(score.max()) < refer_below)
            if cam is not None:
                record["cam"] = str(cam)
            yield record


def predict_images(
    model: Classifier | TorchModel | Callable[[torch.Tensor], np.ndarray],
    paths: Sequence[str | Path],
    batch_size: int = 32,
    k: int = 3,
    threshold: float = 0.5,
    tta: str | None = None,
    progress: bool = False,
    cam_dir: Path | None = None,
    cam_layer: str | None = None,
    calibrated: bool = True,
    operating_point: str | None = None,
) -> Predictions:
    """Class, confidence, top-k and per-class probabilities for each readable image in `paths`, held in memory
    (the Python API; predict.py itself streams them to disk through `iter_records`).

    `model` is a Classifier (from `medclass.module.checkpoint.load_classifier`), a TorchModel, or an
    OnnxModel (`medclass.module.onnx`); anything callable with a `meta` dict works. `cam_dir` saves a
    Grad-CAM overlay per image (torch models only). Unreadable files land in `skipped`. When the
    model's `meta` carries eval.py's temperature, probabilities are calibrated (`calibrated`); when it
    carries binary thresholds, each record gets a `decision` at `operating_point` (default Youden's J),
    taken on the uncalibrated score the threshold was chosen on; when it carries an abstention threshold
    (eval.py `abstain.*`), an image whose uncalibrated confidence falls below it gets `decision=refer`.
    Batches shrink to fit the model's memory budget (`TorchModel(memory_mb=)`, default 1024).
    """
    if isinstance(model, torch.nn.Module):  # a Classifier or Network
        model = TorchModel(model, tta=tta)
    result = Predictions()
    result.records.extend(iter_records(model, paths, result.skipped, batch_size, k, threshold, progress, cam_dir,
                                       cam_layer, calibrated, operating_point))
    return result


def predict_image(module: Classifier, path: str | Path, k: int = 3) -> dict[str, Any]:
    """One new image → its record (`record["class"]`, `record["confidence"]`); an unreadable file raises."""
    files, skipped = collect_inputs(path)
    result = predict_images(module, files, k=k)
    skipped += result.skipped
    if skipped:
        raise MedclassError(f"{path}: {skipped[0][1]}; give a PNG, JPEG, BMP, TIFF or DICOM file")
    return result.records[0]


def log_skipped(skipped: list[Skipped], report: Path) -> None:
    if skipped:
        reasons = Counter(why.split(" (")[0] for _, why in skipped)
        log.warning("skipped %d files (%s); list: %s", len(skipped),
                    ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())), report)


def load_model(cfg: DictConfig) -> TorchModel | Any:
    """The checkpoint (`ckpt_path`) or the exported ONNX file (`onnx_path`): exactly one of them."""
    ckpt, onnx = cfg.get("ckpt_path"), cfg.get("onnx_path")
    if bool(ckpt) == bool(onnx):
        raise MedclassError(f"give exactly one of ckpt_path=<file.ckpt> or onnx_path=<file.onnx> "
                            f"(got ckpt_path={ckpt}, onnx_path={onnx})")
    memory_mb = cfg.get("memory_mb", DEFAULT_MEMORY_MB)
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
        raise MedclassError(f"memory_mb={memory_mb}: expected a whole number of megabytes, at least 1")
    tta_gflop = cfg.get("tta_gflop")
    if tta_gflop is not None and (isinstance(tta_gflop, bool) or not isinstance(tta_gflop, (int, float))
                                  or not 0 <= tta_gflop < float("inf")):
        raise MedclassError(f"tta_gflop={tta_gflop}: expected a number of GFLOP per image, at least 0 (or null: the "
                            "file's own test-time views whatever they cost)")
    if onnx:
        if cfg.get("cam") or cfg.get("tta") not in (None, "none"):
            raise MedclassError(f"cam=true and tta={cfg.get('tta')} need the network itself: use ckpt_path=<file.ckpt> "
                                "instead of onnx_path, or drop those options")
        from medclass.module.onnx import OnnxModel

        model = OnnxModel(onnx)
        model.memory_mb, model.source = memory_mb, f"onnx_path={onnx}"  # its inputs and outputs count (no layers)
        return model
    from medclass.module.checkpoint import network_from, read_model_file

    device = cfg.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from medclass.module import operating_file

    model_file = read_model_file(ckpt)  # once: the description's cost is checked, then its weights are loaded
    check_described_network(model_file.hparams, memory_mb, bool(cfg.get("cam")), f"ckpt_path={ckpt}")
    module = network_from(model_file)
    return TorchModel(module, tta=cfg.get("tta"), device=device,
                      operating=operating_file.load(ckpt, default=module.model_file.operating), memory_mb=memory_mb,
                      tta_gflop=tta_gflop, source=f"ckpt_path={ckpt}")


@dataclass
class PredictionFiles:
    """What `run_predict` wrote: the folder, the count and the skipped files. The records themselves are on disk;
    `records` reads predictions.json back for callers that want them in memory."""

    out: Path
    count: int
    skipped: list[Skipped]

    @property
    def records(self) -> list[dict[str, Any]]:
        with (self.out / "predictions.json").open(encoding="utf-8") as f:
            return json.load(f)["predictions"]


def run_predict(cfg: DictConfig) -> PredictionFiles:
    """What predict.py does: inputs → predictions.csv/.json, skipped.csv (and cam/*.png) in the run folder, the
    records streamed to disk as each batch is scored."""
    out = Path(cfg.paths.output_dir)
    model = load_model(cfg)
    columns: dict[Path, dict[str, str]] = {}
    files, skipped = collect_inputs(cfg.inputs, columns)
    meta, cam = model.meta, bool(cfg.get("cam"))
    decision = decision_threshold(meta, cfg.get("operating_point"))
    source = {"model": str(cfg.get("ckpt_path") or cfg.get("onnx_path")), "inputs": str(cfg.inputs),
              "tta": getattr(getattr(model, "module", None), "tta", "none"),
              "temperature": meta.get("temperature") if cfg.get("calibrated", True) else None,
              "decision_threshold": None if decision is None else {"name": decision[0], "threshold": decision[1]},
              "abstain": meta.get("abstain")}
    extra = list(dict.fromkeys(c for listed in columns.values() for c in listed))  # a CSV's own columns
    scoring_skipped: list[Skipped] = []
    k = max(1, min(int(cfg.k), len(meta["class_names"])))
    with PredictionWriter(out, meta, source, k, decided=decision is not None or abstain_threshold(meta) is not None,
                          cams=cam, extra=extra) as writer:
        for record in iter_records(model, files, scoring_skipped, batch_size=cfg.batch_size, k=cfg.k,
                                   threshold=cfg.threshold, progress=cfg.get("progress", True),
                                   cam_dir=out / "cam" if cam else None, cam_layer=cfg.get("cam_layer"),
                                   calibrated=cfg.get("calibrated", True), operating_point=cfg.get("operating_point")):
            if Path(record["path"]) in columns:  # a CSV's own columns (label, patient, site, ...) beside it
                record["columns"] = columns[Path(record["path"])]
            writer.write(record)
        skipped += scoring_skipped
        writer.finish(skipped)
    write_csv(out / "skipped.csv", ((str(p), why) for p, why in skipped), ("path", "reason"))
    log_skipped(skipped, out / "skipped.csv")
    if not writer.count:
        raise MedclassError(f"none of the {len(skipped)} files of inputs={cfg.inputs} is a readable image "
                            f"(reasons in {out / 'skipped.csv'}); give PNG, JPEG, BMP, TIFF or DICOM files")
    log.info("predicted %d images: %s", writer.count, out / "predictions.csv")
    return PredictionFiles(out, writer.count, skipped)
