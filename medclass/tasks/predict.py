"""Classify new images from a checkpoint (or an exported ONNX file) alone: `python predict.py`.

Every image goes through the code training used (`decode_resized`, then the eval transform with the
checkpoint's mean/std), so a file scores as it would have inside the data set. Files that cannot be
read are listed with their reason, never fatal; only "no readable image at all" stops the run.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track

from medclass.augment import eval_transform
from medclass.data.decode import decode_resized, read_image
from medclass.data.scan import reason_to_skip
from medclass.eval.calibration import apply_temperature
from medclass.module import Classifier
from medclass.module.checkpoint import model_meta
from medclass.module.tta import tta_views
from medclass.utils.errors import MedclassError
from medclass.utils.extras import MissingExtra
from medclass.utils.io import write_csv, write_json

log = logging.getLogger("medclass")
Skipped = tuple[Path, str]


class TorchModel:
    """A Classifier as `probabilities = model(batch)`; `tta` None keeps the checkpoint's setting; `operating`
    (eval.py's temperature and thresholds, `medclass.eval.operating_file`) rides along in `meta`."""

    def __init__(self, module: Classifier, tta: str | None = None, device: str = "cpu",
                 operating: dict[str, Any] | None = None) -> None:
        self.module, self.device = module.eval().to(device), torch.device(device)
        self.meta = {**model_meta(module), **(operating or {})}
        if tta is not None:
            tta_views(tta, self.meta["symmetry"])  # a bad value fails here, naming the choices
            module.tta = tta

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.module.predict_proba(x.to(self.device), tta=True).float().cpu().numpy()


@dataclass
class Predictions:
    records: list[dict[str, Any]] = field(default_factory=list)  # one per readable image, in input order
    skipped: list[Skipped] = field(default_factory=list)  # (path, reason) for every file passed over


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
        return [(p, path) for p in sorted(path.rglob("*")) if p.is_file()]
    if glob.has_magic(spec):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        return [pair for m in matches for pair in _expand(str(m), columns)]
    raise MedclassError(f"inputs={spec} is no file, folder or glob match; give an image, a folder of images or a "
                        "quoted glob such as 'scans/**/*.png'")


def read_manifest_inputs(manifest: Path) -> dict[Path, dict[str, str]]:
    """A CSV of images to predict (`data=manifest`'s format; `label` optional): each file with the row's
    other columns, which predictions.csv carries beside the prediction."""
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise MedclassError(f"inputs={manifest} has no `path` column (has {', '.join(reader.fieldnames or [])}); "
                                "a CSV of inputs lists one image per row under `path`")
        return {(manifest.parent / row["path"].strip()): {k: v or "" for k, v in row.items() if k != "path"}
                for row in reader if (row.get("path") or "").strip()}


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


def _record(path: Path, probs: np.ndarray, meta: dict[str, Any], k: int, threshold: float,
            decision: tuple[str, bool] | None = None, refer: bool | None = None) -> dict[str, Any]:
    names = meta["class_names"]
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(names)))]
    record: dict[str, Any] = {
        "path": str(path),
        "class": names[order[0]],
        "confidence": round(float(probs[order[0]]), 6),
        "top_k": [{"class": names[i], "probability": round(float(probs[i]), 6)} for i in order],
        "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
    }
    if meta["task"] == "multi-label":  # independent labels: every one above the threshold
        record["labels"] = [n for n, p in zip(names, probs, strict=True) if p > threshold]
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
    """Class, confidence, top-k and per-class probabilities for each readable image in `paths`.

    `model` is a Classifier (from `medclass.module.checkpoint.load_classifier`), a TorchModel, or an
    OnnxModel (`medclass.tasks.export`); anything callable with a `meta` dict works. `cam_dir` saves a
    Grad-CAM overlay per image (torch models only). Unreadable files land in `skipped`. When the
    model's `meta` carries eval.py's temperature, probabilities are calibrated (`calibrated`); when it
    carries binary thresholds, each record gets a `decision` at `operating_point` (default Youden's J),
    taken on the uncalibrated score the threshold was chosen on; when it carries an abstention threshold
    (eval.py `abstain.*`), an image whose uncalibrated confidence falls below it gets `decision=refer`.
    """
    if batch_size < 1 or k < 1:
        raise MedclassError(f"batch_size={batch_size} and k={k} must be at least 1")
    if isinstance(model, Classifier):
        model = TorchModel(model, tta=tta)
    meta = model.meta
    if cam_dir is not None and not isinstance(model, TorchModel):
        raise MedclassError("Grad-CAM needs the network's gradients: predict with ckpt_path=<file.ckpt>, not ONNX")
    temperature = meta.get("temperature") if calibrated else None
    decision = decision_threshold(meta, operating_point)
    refer_below = abstain_threshold(meta)
    result, used = Predictions(), set()
    for kept, x, raw in scored_batches(model, paths, batch_size, result.skipped, progress):
        probs = apply_temperature(raw, meta["task"], temperature) if temperature else raw
        # thresholds apply to the uncalibrated scores they were chosen on
        records = [_record(p, row, meta, k, threshold,
                           None if decision is None else (decision[0], float(score[1]) >= decision[1]),
                           None if refer_below is None else float(score.max()) < refer_below)
                   for p, row, score in zip(kept, probs, raw, strict=True)]
        if cam_dir is not None:
            from medclass.eval.explain import save_cam_overlays

            outs = [_unique_png(cam_dir, p, used) for p in kept]
            targets = [int(np.argmax(row)) for row in probs]
            save_cam_overlays(model.module.net, x.to(model.device), targets, [read_image(p) for p in kept], outs,
                              layer=cam_layer)
            for record, out in zip(records, outs, strict=True):
                record["cam"] = str(out)
        result.records.extend(records)
    return result


def scored_batches(model: TorchModel | Callable[[torch.Tensor], np.ndarray], paths: Sequence[str | Path],
                   batch_size: int, skipped: list[Skipped], progress: bool = False
                   ) -> Iterator[tuple[list[Path], torch.Tensor, np.ndarray]]:
    """(readable paths, their input batch, the model's raw probabilities) per batch of `paths`, each image decoded
    and normalized as in training (the model's `meta`); unreadable files are appended to `skipped`, never fatal.
    predict.py and eval.py's external validation both score files through here."""
    meta = model.meta
    to_tensor = eval_transform(None, meta["mean"], meta["std"])  # decode_resized already sized the image
    paths = list(paths)
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in track(chunks, description="predicting", transient=True, disable=not progress or len(chunks) < 2):
        tensors, kept = [], []
        for path in map(Path, chunk):
            try:
                image = decode_resized(path, meta["image_size"], meta["in_chans"])
            except MissingExtra:
                raise
            except Exception as err:  # corrupt, truncated, unreadable: listed, never fatal
                skipped.append((path, f"unreadable image ({type(err).__name__}: {err})"))
                continue
            tensors.append(to_tensor(image=image)["image"])
            kept.append(path)
        if kept:
            x = torch.stack(tensors)
            yield kept, x, model(x)


def predict_image(module: Classifier, path: str | Path, k: int = 3) -> dict[str, Any]:
    """One new image → its record (`record["class"]`, `record["confidence"]`); an unreadable file raises."""
    files, skipped = collect_inputs(path)
    result = predict_images(module, files, k=k)
    skipped += result.skipped
    if skipped:
        raise MedclassError(f"{path}: {skipped[0][1]}; give a PNG, JPEG, BMP, TIFF or DICOM file")
    return result.records[0]


# -- outputs ------------------------------------------------------------------------------------
def write_outputs(out: Path, result: Predictions, meta: dict[str, Any], source: dict[str, Any]) -> None:
    """predictions.csv (one row per image), predictions.json (the same plus the model facts), skipped.csv."""
    out.mkdir(parents=True, exist_ok=True)
    names, multi = meta["class_names"], meta["task"] == "multi-label"
    k = max((len(r["top_k"]) for r in result.records), default=1)
    decided = any("decision" in r for r in result.records)
    cams = any("cam" in r for r in result.records)
    header = ["path", "class", "confidence", *(["decision"] if decided else []), *(["labels"] if multi else []),
              *(f"top{i}_{c}" for i in range(1, k + 1) for c in ("class", "probability")),
              *(f"prob_{n}" for n in names), *(["cam"] if cams else [])]
    extra = list(dict.fromkeys(k for r in result.records for k in r.get("columns", {})))
    header += [f"input_{k}" if k in header else k for k in extra]
    rows = []
    for r in result.records:
        top = [v for t in r["top_k"] for v in (t["class"], t["probability"])]
        rows.append([r["path"], r["class"], r["confidence"], *([r["decision"]] if decided else []),
                     *([";".join(r["labels"])] if multi else []),
                     *top, *[""] * (2 * k - len(top)), *r["probabilities"].values(),
                     *([r.get("cam", "")] if cams else []),
                     *(r.get("columns", {}).get(k, "") for k in extra)])
    write_csv(out / "predictions.csv", rows, header)
    write_csv(out / "skipped.csv", ((str(p), why) for p, why in result.skipped), ("path", "reason"))
    payload = {**source, "task": meta["task"], "class_names": names, "count": len(result.records),
               "predictions": result.records,
               "skipped": [{"path": str(p), "reason": why} for p, why in result.skipped]}
    write_json(out / "predictions.json", payload, sort_keys=False)  # records keep their reading order


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
    if onnx:
        if cfg.get("cam") or cfg.get("tta") not in (None, "none"):
            raise MedclassError(f"cam=true and tta={cfg.get('tta')} need the network itself: use ckpt_path=<file.ckpt> "
                                "instead of onnx_path, or drop those options")
        from medclass.tasks.export import OnnxModel

        return OnnxModel(onnx)
    from medclass.module.checkpoint import load_classifier

    device = cfg.get("device") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from medclass.eval import operating_file

    module = load_classifier(ckpt)
    return TorchModel(module, tta=cfg.get("tta"), device=device,
                      operating=operating_file.load(ckpt, default=module.model_file.operating))


def run_predict(cfg: DictConfig) -> Predictions:
    """What predict.py does: inputs → predictions.csv/.json, skipped.csv (and cam/*.png) in the run folder."""
    out = Path(cfg.paths.output_dir)
    model = load_model(cfg)
    columns: dict[Path, dict[str, str]] = {}
    files, skipped = collect_inputs(cfg.inputs, columns)
    result = predict_images(model, files, batch_size=cfg.batch_size, k=cfg.k, threshold=cfg.threshold,
                            progress=cfg.get("progress", True), cam_dir=out / "cam" if cfg.get("cam") else None,
                            cam_layer=cfg.get("cam_layer"), calibrated=cfg.get("calibrated", True),
                            operating_point=cfg.get("operating_point"))
    result.skipped = skipped + result.skipped
    for record in result.records:  # a CSV's own columns (label, patient, site, ...) beside each prediction
        if Path(record["path"]) in columns:
            record["columns"] = columns[Path(record["path"])]
    decision = decision_threshold(model.meta, cfg.get("operating_point"))
    source = {"model": str(cfg.get("ckpt_path") or cfg.get("onnx_path")), "inputs": str(cfg.inputs),
              "tta": getattr(getattr(model, "module", None), "tta", "none"),
              "temperature": model.meta.get("temperature") if cfg.get("calibrated", True) else None,
              "decision_threshold": None if decision is None else {"name": decision[0], "threshold": decision[1]},
              "abstain": model.meta.get("abstain")}
    write_outputs(out, result, model.meta, source)
    log_skipped(result.skipped, out / "skipped.csv")
    if not result.records:
        raise MedclassError(f"none of the {len(result.skipped)} files of inputs={cfg.inputs} is a readable image "
                            f"(reasons in {out / 'skipped.csv'}); give PNG, JPEG, BMP, TIFF or DICOM files")
    log.info("predicted %d images: %s", len(result.records), out / "predictions.csv")
    return result
