"""Prepare a folder or manifest for streaming: `python prepare.py data=folder data.root=<folder> out=<new folder>`.

The same command as `medclass-prepare` once medclass is installed; the work is in `medclass.tasks.prepare`.
"""

from medclass.tasks.commands import prepare

if __name__ == "__main__":
    prepare()
