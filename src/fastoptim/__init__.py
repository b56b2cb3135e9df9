"""fastoptim: the seven classic optimizers as a drop-in replacement for ``torch.optim``.

``import fastoptim as optim`` and use ``optim.SGD``, ``optim.Adam``, ... as with torch.optim.
"""

from fastoptim.algorithms.adadelta import Adadelta
from fastoptim.algorithms.adagrad import Adagrad
from fastoptim.algorithms.adam import Adam
from fastoptim.algorithms.adamax import Adamax
from fastoptim.algorithms.adamw import AdamW
from fastoptim.algorithms.rmsprop import RMSprop
from fastoptim.algorithms.sgd import SGD
from fastoptim.factory import create_optimizer, registry
from fastoptim.state import full_precision_state_dict

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "RMSprop",
    "create_optimizer",
    "full_precision_state_dict",
    "registry",
]
__version__ = "0.1.0"
