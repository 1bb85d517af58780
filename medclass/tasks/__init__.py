"""What each command does, one module per command; `commands.py` puts Hydra in front of them.

- `train.py`: `medclass-train` (`python train.py`): fit, validate, test, save
- `evaluate.py`: `medclass-eval` (`python eval.py`): a checkpoint's report on one split
- `predict.py`: `medclass-predict` (`python predict.py`): class and confidence for new images
- `export.py`: `medclass-export` (`python export.py`): ONNX with the preprocessing facts inside
- `gather.py`: `medclass-gather`: one table (mean ± std) from a sweep's runs
- `prepare.py`: `medclass-prepare` (`python prepare.py`): a folder or manifest written once for `data=stream`
- `build.py`: the Trainer, callbacks and loggers every task builds the same way

Nothing here is imported by `medclass/__init__.py`, and `commands.py` imports torch only inside each
command, so a mistyped option is reported before the deep-learning stack loads.
"""
