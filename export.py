"""Export a checkpoint to ONNX: `python export.py ckpt_path=<file.ckpt>`.

The same command as `medclass-export` once medclass is installed; the work is in `medclass.tasks.export`.
"""

from medclass.tasks.commands import export

if __name__ == "__main__":
    export()
