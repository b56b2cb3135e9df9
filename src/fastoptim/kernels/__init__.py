"""Fused CPU kernels written with Numba: one module per optimizer plus shared helpers.

Unless the user chose one (``NUMBA_THREADING_LAYER``), Numba is asked for a fork-safe
threading layer: its OpenMP layer, which it would otherwise pick beside torch's GNU OpenMP,
kills forked children (such as DataLoader workers) that run a parallel kernel. Kernel calls
are serialized by ``fastoptim.optimizer.KERNEL_LOCK``, so a layer that is not thread-safe
(workqueue) is safe too.
"""

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "forksafe"
