"""Known noise from our dependencies, silenced where it is emitted; each entry says what and why.

Only messages that carry no information about the run are dropped; every other warning stays.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels").
_TIP = "💡 Tip:"
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

WARNINGS = (
    # Lightning's own use of a deprecated torch API (lightning/pytorch/utilities/_pytree.py).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # torchmetrics' KID keeps every feature in memory: by design here (10k x 128 floats).
    r"Metric `Kernel Inception Distance` will save all extracted features in buffer.*",
    # The LDM's frozen first stage and EMA copy are in eval mode on purpose.
    r".*module\(s\) in eval mode at the start of training.*",
)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_TIP)


def quiet() -> None:
    """Install the filters (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_tip not in logger.filters:
            logger.addFilter(_not_a_tip)
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
