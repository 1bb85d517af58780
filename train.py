"""Train, validate, test and save a classifier: `python train.py model=cnn data=medmnist`.

The same command as `medclass-train` once medclass is installed; the work is in `medclass.tasks.train`.
"""

from medclass.tasks.commands import train

if __name__ == "__main__":
    train()
