"""medclass: medical image classification with PyTorch Lightning and Hydra.

Where things are (each config group in `conf/` has the package of the same name):

    conf/         Hydra configs shipped with the package (pkg://medclass.conf), one folder per group
    data/         conf/data      DataModules: MedMNIST, class folders, CSV manifests; splits, decoding
    augment/      conf/augment   training transforms: Albumentations per sample, Kornia per batch
    model/        conf/model     networks: the custom CNN, timm backbones
    module/       conf/module    the LightningModule: losses, metrics, TTA, fine-tuning, safe checkpoint loading
    callbacks/    conf/callbacks Lightning callbacks: EMA, TensorBoard figures, the epoch line
    logger/       conf/logger    MLflow / W&B / TensorBoard extras: flat config, run files
    eval/                        eval's report: metrics, bootstrap intervals, operating points, calibration, Grad-CAM
    tasks/                       one module per command (train, evaluate, predict, export, gather), `commands` = CLI
    untrusted/                   the boundary for files medclass did not write: bounded, typed, one-line errors
    utils/                       errors, command-line checks, DDP under Hydra, file writes, optional extras

A new dataset goes in data/ (+ conf/data/<name>.yaml), a network in model/ (+ conf/model/), a callback
in callbacks/ (+ an entry in conf/callbacks/), a metric in module/task_kinds.py (training) or eval/metrics.py
(reports). docs/development.md has the longer version.

Importing `medclass` loads nothing heavy: the commands start in well under a second on a typo.
"""

__version__ = "0.1.0"
