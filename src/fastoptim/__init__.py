"""fastoptim: a drop-in replacement for ``torch.optim`` with fused CPU kernels.

``import fastoptim as optim`` and use ``optim.SGD``, ``optim.Adam``, ... as with torch.optim;
``optim.Optimizer``, ``optim.lr_scheduler`` and ``optim.swa_utils`` are torch's own.
"""

from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler, swa_utils

from fastoptim.catalog import NAMES, OPTIMIZERS
from fastoptim.factory import create_optimizer, registry
from fastoptim.state import full_precision_state_dict

globals().update({entry.name: entry.cls for entry in OPTIMIZERS})

__all__ = [
    *NAMES,
    "Optimizer",
    "create_optimizer",
    "full_precision_state_dict",
    "lr_scheduler",
    "registry",
    "swa_utils",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """A torch.optim optimizer that fastoptim does not have yet: an AttributeError that says
    so and names torch's class."""
    candidate = getattr(torch.optim, name, None)
    if isinstance(candidate, type) and issubclass(candidate, Optimizer):
        raise AttributeError(
            f"fastoptim has no {name} yet: use torch.optim.{name} (fastoptim has "
            f"{', '.join(NAMES)})"
        )
    raise AttributeError(f"module 'fastoptim' has no attribute {name!r}")
