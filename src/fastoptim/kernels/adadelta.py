"""Fused Adadelta kernel: one pass over param, grad and both averages for every tensor."""

import numpy as np
from numba import prange

from fastoptim.kernels.memory import chunks_of, compute, encode, kernel, load, view


@kernel
def adadelta_kernel(  # type: ignore[no-untyped-def]
    addresses, sizes, marker, step_marker, lr, rho, eps, weight_decay, grad_factor
):
    """Adadelta over the tensors whose addresses are the columns of ``addresses``.

    Rows: param, grad, step, square_avg, acc_delta. ``grad_factor``: -1 for maximize, times
    1/grad_scale.
    """
    for tensor in range(sizes.shape[0]):
        view(addresses[2, tensor], 1, step_marker)[0] += 1

    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    keep, weight = compute(rho, marker), compute(1.0 - rho, marker)
    epsilon = compute(eps, marker)
    neg_lr = compute(-lr, marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        param = view(addresses[0, tensor], stop, marker)[start:stop]
        grad = view(addresses[1, tensor], stop, marker)[start:stop]
        square_avg = view(addresses[3, tensor], stop, marker)[start:stop]
        acc_delta = view(addresses[4, tensor], stop, marker)[start:stop]
        for i in range(stop - start):
            g = load(grad, i) * factor
            p = load(param, i)
            g = g + decay * p if l2 else g
            v = load(square_avg, i) * keep + weight * g * g
            delta = np.sqrt(load(acc_delta, i) + epsilon) / np.sqrt(v + epsilon) * g
            square_avg[i] = encode(v, square_avg)
            acc_delta[i] = encode(load(acc_delta, i) * keep + weight * delta * delta, acc_delta)
            param[i] = encode(p + neg_lr * delta, param)
