"""Peak private memory of `train.py` as the data set grows, and whether each run fits a 4 GiB cap: prints a table.

    python benchmarks/memory.py --sizes 2500 10000 50000 --npz --write     # the table of benchmarks/results/memory.md
    python benchmarks/memory.py --sizes 200 400 --npz --npz-scale 0.02     # a check of this script (minutes)

Data, written once into `--work` (default /tmp/medclass-memory) and reused while its marker file says
it is complete (delete the folder to write it again):

- `folders/set-<N>/`: N colour JPEGs of `--image-size` px (256), quality 90, 10-20 KB each (random 16x16
  colour fields upscaled bicubically, so they decode like photographs and do not compress to nothing),
  spread over 8 class folders, from a fixed seed.
- `npz-<tag>/bloodmnist_224.npz`: the official MedMNIST layout at BloodMNIST's size (11959/1712/3421
  train/val/test images, (N, 224, 224, 3) uint8, labels (N, 1) uint8 0..7; `--npz-scale` shrinks the
  counts), members `<split>_images.npy` then `<split>_labels.npy`, ZIP_DEFLATED like the official files.
  Each member is streamed into the zip chunk by chunk (the .npy header, then the pixels), so writing
  it never holds more than one chunk of images.

Each set gets its own `paths.log_dir` (`<work>/runs/<set>/`, emptied before the first run) and two
runs of the command a user types, each inside a fresh cgroup-v1 memory cgroup with
`memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, so it cannot swap around it) set to
`--cap` (4G):

  (1) first run, no cache: `python train.py data=folder data.root=<set> data.image_size=256
      data.in_chans=3 debug=fast paths.log_dir=<scratch> logger=none` (`data=medmnist data.size=224
      data.root=<dir> data.download=false` for the .npz). debug=fast: 1 epoch of 4 training batches of
      32, 2 validation and 2 test batches, `data.num_workers=0`. Gives the time to the first training
      step (start-up + decoding or unpacking every image + writing the cache), peak memory, and
      whether the cold path finishes inside the cap.
  (2) later run, cache present: the same command with `trainer.limit_train_batches=--train-batches`
      (8; the .npz's a whole epoch with `--npz-full-epoch`, about an hour on 2 CPU cores). Gives the
      start time of a run that reads the cache, training images/s, peak memory, and whether the warm
      path finishes inside the cap.

Two runs give every column; both are capped because the cap is the question ("does it fit a 4 GiB
machine"), and because a capped run's peak private memory is the uncapped one: anonymous pages can
only leave RAM through swap, which the memsw limit forbids, so a cap only takes page cache back
(or kills the run, which the table then says). It also keeps a run that does not fit from taking the
whole machine. The cgroup is `/sys/fs/cgroup/memory/<this process's memory cgroup>/medclass-bench-<pid>-
<set>-<run>` (below our own, so a container's or session's limits still hold), and removed after the
run. `--cap 0` runs without a cgroup; so does a machine without cgroup v1 or root (one line says so).
The JPEGs are read from page cache when they were just written (the OS cache is not dropped: the
machine may be shared), so decode times are CPU time, not disk time.

Measurements:

- peak private memory: a thread reads `RssAnon` from /proc/<pid>/status every 0.1 s for the launched
  process and all its descendants (DataLoader workers are children; found through each process's
  parent in /proc/<pid>/stat) and keeps the peak of the sum. Memory-mapped cache files are page cache
  (RssFile), not private, so the peak total RSS (VmRSS, summed the same way) is shown beside it.
  "Of which before step 1" is the peak of the samples taken before the first training batch began:
  the data's setup (decoding, unpacking, caching, statistics) without the network's activations: a
  training step of `model=cnn` at 256 px and batch 32 adds about 2.3 GiB to the ~0.6 GiB of the
  started process, whatever the set's size.
- the cap: after the run, the cgroup's `memory.max_usage_in_bytes` (private memory plus page cache, so
  near the cap once the cache is bigger than it), `memory.failcnt` (times usage hit the limit and
  the kernel had to take pages back), and the oom killer's count from `memory.oom_control` together
  with the exit status (-9: killed).
- times: a callback added on the command line (`+callbacks.memory_marks={_target_:benchmarks.memory.marks,
  ...}`, the mechanism `callbacks.ema` uses; it reads nothing and keeps no state) appends wall-clock
  marks to a file: the start of the first training batch and the end of every training batch. "s to
  first step" runs from the launch of the command to the start of the first batch; "decode" is the
  first run's minus the later run's; images/s counts the images of batches 2..K over the time from
  the end of batch 1 to the end of batch K (steady state: every interval holds one fetch and one step).

Every run's output is in `<work>/runs/<set>/run<1|2>.log`, and every number (with the memory time
series) in `<work>/results.json`. With `--write` the table goes to benchmarks/results/memory.md
with this command, the machine, the date and the git commit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import track

ROOT = Path(__file__).resolve().parents[1]
CGROUP_MOUNT = Path("/sys/fs/cgroup/memory")
CLASSES = 8
SEED = 0
GRID = 16  # random colour field upscaled to the image size: smooth, ~14 KB as a 256 px JPEG
BLOOD = {"train": 11959, "val": 1712, "test": 3421}  # BloodMNIST's official split sizes
NPZ_SIZE = 224
GENERATOR = 1  # bump when the synthetic data change, so old sets are written again
MIB = 2**20


# -- synthetic data ------------------------------------------------------------------------------------
def random_fields(rng: np.random.Generator, n: int, size: int) -> list[np.ndarray]:
    """n (size, size, 3) uint8 images: random GRIDxGRID colour fields upscaled bicubically."""
    grids = rng.integers(0, 256, (n, GRID, GRID, 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC)) for g in grids]


def is_complete(marker: Path, spec: dict[str, Any]) -> bool:
    try:
        return json.loads(marker.read_text()) == spec
    except (OSError, ValueError):
        return False


def folder_set(work: Path, n: int, size: int) -> Path:
    """`work/folders/set-<n>[-<size>px]/<class>/<i>.jpg`, written once (marker: set-<n>.json beside it)."""
    name = f"set-{n}" if size == 256 else f"set-{n}-{size}px"
    root, marker = work / "folders" / name, work / "folders" / f"{name}.json"
    spec = {"images": n, "size": size, "classes": CLASSES, "seed": SEED, "generator": GENERATOR}
    if is_complete(marker, spec):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    rng = np.random.default_rng([SEED, n])
    chunk = 256
    for start in track(range(0, n, chunk), description=f"writing {n} JPEGs into {root}"):
        for i, image in enumerate(random_fields(rng, min(chunk, n - start), size), start):
            Image.fromarray(image).save(root / f"class{i % CLASSES}" / f"img{i:06d}.jpg", quality=90)
    marker.write_text(json.dumps(spec))
    return root


def write_member(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], chunks) -> None:
    """One `.npy` member, streamed: the format-1.0 header of a C-order uint8 array, then each chunk's bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # as the official files have it
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.dtype(np.uint8).str, "fortran_order": False,
                                                 "shape": shape})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, np.uint8).data)


def npz_file(work: Path, scale: float) -> tuple[Path, dict[str, int]]:
    """`work/npz-<tag>/bloodmnist_224.npz` in the official layout, written once (marker beside the folder)."""
    counts = {s: max(1, round(n * scale)) for s, n in BLOOD.items()}
    tag = "bloodmnist" if scale == 1 else f"bloodmnist-x{scale:g}"
    folder, marker = work / f"npz-{tag}", work / f"npz-{tag}.json"
    path = folder / f"bloodmnist_{NPZ_SIZE}.npz"
    spec = {"counts": counts, "size": NPZ_SIZE, "seed": SEED, "generator": GENERATOR}
    if is_complete(marker, spec):
        return path, counts
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng([SEED, NPZ_SIZE])
    chunk = 128  # 19 MB of pixels at a time
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for split, n in counts.items():
            def images(n: int = n, split: str = split):
                for start in track(range(0, n, chunk), description=f"{path.name}: {split}_images ({n})"):
                    # quantized to steps of 4: deflate then shrinks the pixels ~1.4x, about as the real files
                    yield np.stack(random_fields(rng, min(chunk, n - start), NPZ_SIZE)) // 4 * 4
            write_member(zf, f"{split}_images.npy", (n, NPZ_SIZE, NPZ_SIZE, 3), images())
            labels = (np.arange(n) % CLASSES).astype(np.uint8).reshape(n, 1)
            rng.shuffle(labels)
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, labels)
            info = zipfile.ZipInfo(f"{split}_labels.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    marker.write_text(json.dumps(spec))
    return path, counts


# -- the timing callback (instantiated inside train.py by Hydra) ----------------------------------------
def marks(path: str) -> Any:
    """A Lightning callback that appends wall-clock marks to `path` as JSON lines: `first_batch_start`,
    then `batch_end` (with the batch's image count) for every training batch of the first epoch."""
    import lightning as L

    def count(batch: Any) -> int:
        first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())) \
            if isinstance(batch, dict) else batch
        return int(len(first))

    class Marks(L.Callback):
        def __init__(self) -> None:
            self.file = open(path, "a", buffering=1)  # one flushed line per mark; closed at exit

        def mark(self, event: str, **values: Any) -> None:
            self.file.write(json.dumps({"event": event, "t": time.time(), **values}) + "\n")

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == 0 and batch_idx == 0:
                self.mark("first_batch_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 0:
                self.mark("batch_end", batch=batch_idx, images=count(batch))

    return Marks()


# -- memory sampling --------------------------------------------------------------------------------------
def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the parent pid in every /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def status_kb(pid: int, keys: tuple[str, ...] = ("RssAnon", "VmRSS")) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


@dataclass
class Sampler:
    """Polls the process tree of `pid` every `interval` s until the process ends; keeps peaks and a series."""

    pid: int
    start: float
    interval: float = 0.1
    peak_anon_kb: int = 0
    peak_rss_kb: int = 0
    peak_anon_at: float = 0.0
    most_processes: int = 0
    series: list[tuple[float, int, int]] = field(default_factory=list)  # (s since launch, RssAnon kB, VmRSS kB)

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        tree = process_tree(self.pid)
        anon = rss = 0
        for pid in tree:
            kb = status_kb(pid)
            anon += kb.get("RssAnon", 0)
            rss += kb.get("VmRSS", 0)
        now = time.time() - self.start
        self.series.append((round(now, 2), anon, rss))
        self.most_processes = max(self.most_processes, len(tree))
        if anon > self.peak_anon_kb:
            self.peak_anon_kb, self.peak_anon_at = anon, now
        self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


# -- the cap ----------------------------------------------------------------------------------------------
def own_cgroup() -> Path | None:
    """This process's cgroup-v1 memory folder (the benchmark's cgroups go below it), or None."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                folder = CGROUP_MOUNT / path.lstrip("/")
                return folder if (folder / "memory.limit_in_bytes").is_file() else None
    except OSError:
        pass
    return None


def make_cgroup(cap: int, name: str) -> tuple[Path | None, str]:
    """A new memory cgroup below our own with `cap` bytes (RAM, and RAM + swap); (None, why) when impossible."""
    base = own_cgroup()
    if base is None:
        return None, f"no cgroup-v1 memory controller at {CGROUP_MOUNT}"
    folder = base / name
    try:
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(cap))
        if (folder / "memory.memsw.limit_in_bytes").is_file():  # after the RAM limit: memsw may not be below it
            (folder / "memory.memsw.limit_in_bytes").write_text(str(cap))
    except OSError as err:
        if folder.is_dir():
            folder.rmdir()
        return None, f"cannot make the cgroup {folder} ({err.strerror}; root is needed)"
    return folder, ""


def read_cgroup(folder: Path) -> dict[str, int]:
    def number(name: str) -> int:
        path = folder / name
        return int(path.read_text()) if path.is_file() else 0

    oom = dict(line.split() for line in (folder / "memory.oom_control").read_text().splitlines())
    return {"max_usage": number("memory.max_usage_in_bytes"), "limit": number("memory.limit_in_bytes"),
            "failcnt": number("memory.failcnt"), "memsw_failcnt": number("memory.memsw.failcnt"),
            "oom_kill": int(oom.get("oom_kill", 0))}


def remove_cgroup(folder: Path) -> None:
    """rmdir once the processes are gone (a straggler the run left is ended by its pid first)."""
    for _ in range(50):
        pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        try:
            folder.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not remove {folder}", flush=True)


# -- one run ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    label: str
    command: list[str]
    exit_code: int = 0
    timed_out: bool = False
    seconds: float = 0.0
    capped: bool = False
    cgroup: dict[str, int] = field(default_factory=dict)
    peak_anon_mib: float = 0.0
    peak_rss_mib: float = 0.0
    peak_anon_at_s: float = 0.0
    setup_peak_anon_mib: float | None = None  # before the first training batch: data setup, no activations yet
    processes: int = 0
    to_first_step_s: float | None = None
    images_per_s: float | None = None
    timed_images: int = 0
    log: str = ""
    series: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.exit_code == 0 and not self.cgroup.get("oom_kill")

    def outcome(self) -> str:
        if self.finished:
            return "yes"
        if self.timed_out:
            return "no: timed out"
        if self.exit_code in (-9, 137) or self.cgroup.get("oom_kill"):
            return "no: killed (oom)" if self.cgroup.get("oom_kill") else "no: killed"
        return f"no: exit {self.exit_code}"


def read_marks(path: Path, launched: float, run: Run) -> None:
    if not path.is_file():
        return
    marks_ = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = [m["t"] for m in marks_ if m["event"] == "first_batch_start"]
    if first:
        run.to_first_step_s = first[0] - launched
    ends = [m for m in marks_ if m["event"] == "batch_end"]
    if len(ends) >= 2:
        run.timed_images = sum(m["images"] for m in ends[1:])
        run.images_per_s = run.timed_images / (ends[-1]["t"] - ends[0]["t"])


def run_command(label: str, overrides: list[str], log_dir: Path, cap: int, timeout: float) -> Run:
    marks_file = log_dir / f"{label}.marks.jsonl"
    marks_file.unlink(missing_ok=True)
    command = [sys.executable, "train.py", *overrides, f"paths.log_dir={log_dir}", "logger=none",
               f"+callbacks.memory_marks={{_target_:benchmarks.memory.marks,path:'{marks_file}'}}"]
    run = Run(label=label, command=command, log=str(log_dir / f"{label}.log"))
    folder, why = make_cgroup(cap, f"medclass-bench-{os.getpid()}-{log_dir.name}-{label}") if cap else (None, "")
    if cap and folder is None:
        print(f"  uncapped: {why}", flush=True)
    argv = command
    if folder is not None:  # the shell joins the cgroup, then becomes train.py: no fork while our sampler runs
        argv = ["sh", "-c", f'echo $$ > "{folder}/cgroup.procs" && exec "$@"', "sh", *command]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print("  $ " + " ".join(["python", *command[1:]]), flush=True)
    try:
        with open(run.log, "w") as out:
            launched = time.time()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            sampler = Sampler(proc.pid, launched)
            try:
                run.exit_code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the session we started for it
                run.exit_code, run.timed_out = proc.wait(), True
                print(f"  timed out after {timeout:.0f} s", flush=True)
            run.seconds = time.time() - launched
            sampler.stop()
        if folder is not None:
            run.capped, run.cgroup = True, read_cgroup(folder)
    finally:
        if folder is not None:
            remove_cgroup(folder)
    run.peak_anon_mib, run.peak_rss_mib = sampler.peak_anon_kb / 1024, sampler.peak_rss_kb / 1024
    run.peak_anon_at_s, run.processes, run.series = sampler.peak_anon_at, sampler.most_processes, sampler.series
    read_marks(marks_file, launched, run)
    if run.to_first_step_s is not None:
        run.setup_peak_anon_mib = max((a for t, a, _ in run.series if t < run.to_first_step_s), default=0) / 1024
    cg = (f", cgroup max {run.cgroup['max_usage'] / MIB:.0f} MiB, failcnt {run.cgroup['failcnt']} (memsw "
          f"{run.cgroup['memsw_failcnt']}), oom kills {run.cgroup['oom_kill']}" if run.capped else "")
    print(f"  {label}: finished {run.outcome()}, {run.seconds:.0f} s, peak RssAnon {run.peak_anon_mib:.0f} MiB "
          f"(at {run.peak_anon_at_s:.1f} s), peak RSS {run.peak_rss_mib:.0f} MiB{cg}, first step "
          + (f"{run.to_first_step_s:.1f} s" if run.to_first_step_s is not None else "never")
          + (f", {run.images_per_s:.1f} images/s" if run.images_per_s else ""), flush=True)
    if not run.finished:
        tail = [line for line in Path(run.log).read_text().splitlines() if line.strip()][-8:]
        print(f"  last lines of {run.log}:\n    " + "\n    ".join(tail or ["(none)"]), flush=True)
    return run


def merge(*overrides: list[str]) -> list[str]:
    """Hydra overrides in order, a later value of the same key replacing an earlier one (Hydra refuses two)."""
    merged: dict[str, str] = {}
    for item in (o for group in overrides for o in group):
        merged[item.split("=", 1)[0].lstrip("+~")] = item
    return list(merged.values())


def measure(name: str, data: list[str], args: argparse.Namespace, train_batches: int | float,
            extra: list[str] | None = None) -> list[Run]:
    """The two runs of one set (module docstring): cold cache, then warm with a longer timed epoch."""
    log_dir = args.work / "runs" / name
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    workers = [] if args.num_workers is None else [f"data.num_workers={args.num_workers}"]
    common = [*data, "debug=fast", *workers]
    print(f"{name}:", flush=True)
    extra = args.extra if extra is None else extra
    first = run_command("run1", merge(common, extra), log_dir, args.cap, args.timeout)
    later = run_command("run2", merge(common, [f"trainer.limit_train_batches={train_batches}"], extra),
                        log_dir, args.cap, args.timeout)
    return [first, later]


# -- the table --------------------------------------------------------------------------------------------
def parse_bytes(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = text.strip().lower().rstrip("b")
    if text in ("", "0", "none"):
        return 0
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def size_text(n: int) -> str:
    """4294967296 -> '4 GiB', 419430400 -> '400 MiB'."""
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / MIB:g} MiB"


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(rows: list[tuple[str, int, list[Run]]], cap: int) -> list[str]:
    folder_peaks = [max(r.peak_anon_mib for r in runs) for name, _, runs in rows if not name.startswith("npz")]
    base = folder_peaks[0] if folder_peaks else None
    cap_text = f"{size_text(cap)} cap" if cap else "cap"
    lines = [f"| set | images | peak private MiB (RssAnon) | × smallest set | of which before step 1 MiB "
             f"| peak RSS MiB | finished inside the "
             f"{cap_text} (run 1 / run 2) | cgroup max usage MiB | run 1 s to first step | decode s (run 1 − run 2) "
             "| run 2 s to first step | training images/s |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, n, (first, later) in rows:
        peak = max(first.peak_anon_mib, later.peak_anon_mib)
        cut = "" if first.finished and later.finished else "≥ "  # a killed run's peak is where it was stopped
        ratio = f"{peak / base:.2f}" if base and not name.startswith("npz") else "–"
        capped = "/".join(r.outcome() for r in (first, later)) if first.capped else "uncapped"
        usage = max((r.cgroup.get("max_usage", 0) for r in (first, later)), default=0) / MIB
        decode = (first.to_first_step_s - later.to_first_step_s
                  if first.to_first_step_s is not None and later.to_first_step_s is not None else None)
        setup = [r.setup_peak_anon_mib for r in (first, later) if r.setup_peak_anon_mib is not None]
        lines.append(f"| {name} | {n} | {cut}{peak:.0f} | {ratio} | {fmt(max(setup) if setup else None)} "
                     f"| {max(first.peak_rss_mib, later.peak_rss_mib):.0f} "
                     f"| {capped} | {fmt(usage) if first.capped else '–'} | {fmt(first.to_first_step_s, 1)} | "
                     f"{fmt(decode, 1)} | {fmt(later.to_first_step_s, 1)} | {fmt(later.images_per_s, 1)} |")
    return lines


def checks(rows: list[tuple[str, int, list[Run]]], cap: int) -> list[str]:
    """The issue's done criteria, one line each."""
    out = []
    every = all(r.finished and r.capped for _, _, runs in rows for r in runs)
    out.append(f"- every run finished inside the {size_text(cap)} cap: {'yes' if every else 'NO'}" if cap else
               "- no cap was set (--cap 0): the runs were not checked against one")
    folders = [(n, max(r.peak_anon_mib for r in runs)) for name, n, runs in rows if not name.startswith("npz")]
    if len(folders) >= 2:
        (n0, p0), (n1, p1) = folders[0], folders[-1]
        out.append(f"- peak private memory at {n1} images is {p1 / p0:.2f}× that at {n0} (limit 1.5×): "
                   f"{'yes' if p1 <= 1.5 * p0 else 'NO'}")
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.1f} GiB RAM, Linux {platform.release()}"


def git_commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2500, 10000, 50000], help="images per folder set")
    parser.add_argument("--image-size", type=int, default=256, help="side of the JPEGs and data.image_size")
    parser.add_argument("--npz", action="store_true", help="also the synthetic 224 px BloodMNIST-size .npz")
    parser.add_argument("--npz-scale", type=float, default=1.0, help="shrink the .npz's split sizes (tests)")
    parser.add_argument("--npz-full-epoch", action="store_true",
                        help="run 2 of the .npz trains a whole epoch (about an hour on 2 CPU cores at 224 px)")
    parser.add_argument("--cap", default="4G", help="memory.limit_in_bytes of every run (0: no cgroup)")
    parser.add_argument("--train-batches", type=int, default=8, help="training batches of run 2 (images/s)")
    parser.add_argument("--num-workers", type=int, help="data.num_workers (default: debug=fast's, 0)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--npz-extra", nargs="*", default=[],
                        help="more overrides for the .npz runs, e.g. data.image_size=64: the 224 px images are read "
                             "from the cache and resized on the fly, so a whole epoch of the network takes minutes")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per run before it is stopped")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medclass-memory"), help="data and run folders")
    parser.add_argument("--write", action="store_true", help="write the table to --out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.md")
    args = parser.parse_args()
    args.cap = parse_bytes(args.cap)
    if args.train_batches < 2:
        parser.error("--train-batches needs 2 or more (images/s runs from the end of batch 1)")
    started = time.strftime("%Y-%m-%d %H:%M")
    args.work.mkdir(parents=True, exist_ok=True)
    sets = [(f"folder {n} × {args.image_size} px RGB JPEG", n, folder_set(args.work, n, args.image_size))
            for n in sorted(args.sizes)]
    npz = npz_file(args.work, args.npz_scale) if args.npz else None

    rows: list[tuple[str, int, list[Run]]] = []
    for label, n, root in sets:
        data = ["data=folder", f"data.root={root}", f"data.image_size={args.image_size}", "data.in_chans=3"]
        rows.append((label, n, measure(root.name, data, args, args.train_batches)))
    if npz:
        path, counts = npz
        data = ["data=medmnist", f"data.root={path.parent}", f"data.size={NPZ_SIZE}", "data.download=false"]
        label = f"npz {'/'.join(str(c) for c in counts.values())} × {NPZ_SIZE} px (BloodMNIST size)"
        batches = 1.0 if args.npz_full_epoch else args.train_batches  # 1.0: every batch
        rows.append((label, sum(counts.values()), measure(path.parent.name, data, args, batches,
                                                          [*args.extra, *args.npz_extra])))

    lines, done = table(rows, args.cap), checks(rows, args.cap)
    print("\n" + "\n".join(lines) + "\n\n" + "\n".join(done))
    results = [{"set": name, "images": n, "runs": [asdict(r) for r in runs]} for name, n, runs in rows]
    (args.work / "results.json").write_text(json.dumps(results))
    print(f"\nevery run: {args.work / 'results.json'}; logs in {args.work / 'runs'}")
    if not args.write:
        return
    command = " ".join(["python benchmarks/memory.py", *sys.argv[1:]])
    example = " ".join(["python", *rows[0][2][0].command[1:]]) if rows else ""
    capped = all(r.capped for _, _, runs in rows for r in runs)
    where = (f"both times in a cgroup-v1 memory cgroup of {size_text(args.cap)} (RAM and RAM + swap)" if capped
             else "without a memory cap" if not args.cap else "some without the cap (no cgroup could be made)")
    text = "\n".join([
        "# Memory: peak private memory against data set size, inside a memory cap", "",
        f"Made by `{command}` ({started}; {machine()}; commit {git_commit()}; torch {version('torch')}, "
        f"lightning {version('lightning')}, Python {platform.python_version()}).", "",
        f"Each set ran twice, {where}: run 1 with no cache (`debug=fast`: 4 training batches of 32), run 2 with "
        f"the cache run 1 wrote (`trainer.limit_train_batches={args.train_batches}`"
        + ("; the .npz's: a whole epoch" if args.npz_full_epoch and npz else "")
        + (f"; the .npz's also with `{' '.join(args.npz_extra)}`" if args.npz_extra and npz else "")
        + "). The first run's command:", "",
        f"    {example}", "",
        "Peak private memory: the peak over both runs of `RssAnon` summed over the process and its "
        "descendants, every 0.1 s; before step 1: its peak before the first training batch began (data setup, "
        "no activations yet). Peak RSS adds memory-mapped files (page cache) and shared pages. "
        "cgroup max usage: `memory.max_usage_in_bytes` (private memory plus page cache). Times: from the "
        "launch of the command to the start of the first training batch; decode is run 1's minus run 2's; "
        "images/s over run 2's training batches 2 to the last. `benchmarks/memory.py`'s docstring says how.", "",
        *lines, "", *done, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
