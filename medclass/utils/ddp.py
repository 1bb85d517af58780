"""DDP under Hydra: start ranks > 0 as the same single job, also inside a multirun or an Optuna trial.

Lightning starts rank 1.. by re-running the command line plus `hydra.run.dir=<run dir>`. Under `-m` that
command is the whole sweep again (every rank would launch every job, in new folders). Here each rank
gets the job's own overrides and output folder instead, as a plain run; and after each job the process
group and the rank variables Lightning set are cleared, so the next job of the sweep starts its own ranks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path

# what Lightning's script launcher puts into the launching process's environment
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def rank_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command and working folder for DDP rank `local_rank` of the current Hydra job."""
    hydra_cfg = HydraConfig.get()
    command = [sys.executable, to_absolute_path(sys.argv[0]), *hydra_cfg.overrides.task,
               f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
               "hydra.output_subdir=null", "hydra.mode=RUN"]
    return command, get_original_cwd()


def install() -> None:
    """Use rank_command for Lightning's script launcher (trainer=ddp on one machine; SLURM starts ranks itself)."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    if hasattr(subprocess_script, "_hydra_subprocess_cmd"):
        subprocess_script._hydra_subprocess_cmd = rank_command


@contextmanager
def one_job() -> Iterator[None]:
    """Run one job; afterwards undo what a DDP launch left behind in this process (not when SLURM/torchrun set it)."""
    before = {k: os.environ.get(k) for k in LAUNCHER_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if before["LOCAL_RANK"] is None:  # this process launched the ranks itself
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
