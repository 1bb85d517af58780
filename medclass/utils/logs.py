"""One line per event on the console: Lightning's messages through the run's own handlers, once.

Lightning gives its `lightning` logger a console handler of its own and lets records propagate to
the root logger too, which Hydra has already given a console and a file handler, so every Lightning
message was printed twice in two formats. `one_console` removes Lightning's handler (its messages
then reach the console and `<task>.log` once, in Hydra's format), drops three lines that say nothing
about the run (an advertisement, the TPU count, the step-count estimate), and silences one
deprecation warning that Lightning's own code triggers in torch, at that module only.
"""

from __future__ import annotations

import logging
import warnings

NOISE = ("💡 Tip", "TPU available", "Loading `train_dataloader` to estimate")
RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NOISE)


def one_console() -> None:
    """Call once Hydra has set up logging, before Lightning's first message (the tasks that use Lightning do, in
    `build_trainer` and before seeding); safe to call again. Commands that never need Lightning (predict, a
    refused model file) do not import it for this."""
    import lightning  # noqa: F401  (its import adds the handler removed here)

    root = logging.getLogger("lightning")
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.propagate = True
    for name in RANK_ZERO:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")
