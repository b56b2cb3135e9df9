"""Fused Adagrad kernel: one pass over param, grad and sum for every tensor of a group."""

import numpy as np
from numba import prange

from fastoptim.kernels.memory import chunks_of, compute, encode, kernel, load, view


@kernel
def adagrad_kernel(  # type: ignore[no-untyped-def]
    addresses, sizes, marker, step_marker, lr, lr_decay, weight_decay, eps, grad_factor
):
    """Adagrad over the tensors whose addresses are the columns of ``addresses``.

    Rows: param, grad, step, sum. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    count = sizes.shape[0]
    neg_clrs = np.empty(count)
    for tensor in range(count):
        step = view(addresses[2, tensor], 1, step_marker)
        step[0] += 1
        neg_clrs[tensor] = -(lr / (1.0 + (np.float64(step[0]) - 1.0) * lr_decay))

    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    epsilon = compute(eps, marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        param = view(addresses[0, tensor], stop, marker)[start:stop]
        grad = view(addresses[1, tensor], stop, marker)[start:stop]
        total = view(addresses[3, tensor], stop, marker)[start:stop]
        neg_clr = compute(neg_clrs[tensor], marker)
        for i in range(stop - start):
            g = load(grad, i) * factor
            p = load(param, i)
            g = g + decay * p if l2 else g
            s = load(total, i) + g * g
            total[i] = encode(s, total)
            param[i] = encode(p + neg_clr * g / (np.sqrt(s) + epsilon), param)
