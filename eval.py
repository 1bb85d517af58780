"""Evaluate a checkpoint on a split: `python eval.py ckpt_path=<file.ckpt> split=test`.

The same command as `medclass-eval` once medclass is installed; the work is in `medclass.tasks.evaluate`.
"""

from medclass.tasks.commands import evaluate

if __name__ == "__main__":
    evaluate()
