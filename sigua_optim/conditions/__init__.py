"""Conditions: which samples of a mini-batch are good (descend) and which are bad (ascend).

A condition is any callable ``(losses, **inputs) -> Selection(good, bad)``; the built-ins cover
the paper's methods (the table of conditions in README.md; docs/differences.md for where they
follow the paper and where the authors' code).
"""

from .all_good import AllGood
from .base import Condition, Selection
from .correction import NonNegativeCorrection
from .known_clean import KnownClean
from .peer import Peer
from .small_loss import BandSelected, SmallLoss

__all__ = [
    "AllGood",
    "BandSelected",
    "Condition",
    "KnownClean",
    "NonNegativeCorrection",
    "Peer",
    "Selection",
    "SmallLoss",
]
