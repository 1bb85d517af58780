"""Classify new images: `python predict.py ckpt_path=<file.ckpt> inputs=<image|folder|glob|csv>`.

The same command as `medclass-predict` once medclass is installed; the work is in `medclass.tasks.predict`.
"""

from medclass.tasks.commands import predict

if __name__ == "__main__":
    predict()
