"""The Hydra configs, shipped with the package: `pkg://medclass.conf` (one folder per config group)."""
