"""Plumbing every part shares: the error type users see (`errors`), command-line checks and sweep
bookkeeping (`cli`), DDP under Hydra (`ddp`), whole-file writes (`io`), optional extras (`extras`)."""
