"""Fused RMSprop kernel: one pass over param, grad and averages for every tensor of a group."""

import numpy as np
from numba import njit, prange

from fastoptim.kernels.memory import chunks_of, compute, encode, kernel, lerp, load, view


@njit(inline="always")
def decayed_grad(param, grad, square_avg, i, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s gradient (with L2 decay) and its updated square average.

    ``c``: (grad factor, L2 on, L2 decay, alpha, 1 - alpha, eps).
    """
    factor, l2, decay, keep, weight, _ = c
    g = load(grad, i) * factor
    g = g + decay * load(param, i) if l2 else g
    v = load(square_avg, i) * keep + weight * g * g
    square_avg[i] = encode(v, square_avg)
    return g, v


@njit(inline="always")
def centered_avg(grad_avg, i, g, v, c):  # type: ignore[no-untyped-def]
    """Update element ``i``'s gradient average; return sqrt(v - gbar^2) + eps."""
    _, _, _, keep, weight, epsilon = c
    gbar = lerp(load(grad_avg, i), g, weight, keep)
    grad_avg[i] = encode(gbar, grad_avg)
    return np.sqrt(v - gbar * gbar) + epsilon


@kernel
def rmsprop_kernel(  # type: ignore[no-untyped-def]
    addresses,
    sizes,
    marker,
    step_marker,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    grad_factor,
):
    """RMSprop over the tensors whose addresses are the columns of ``addresses``.

    Rows: param, grad, step, square_avg, then momentum_buffer when ``momentum > 0`` and
    grad_avg when ``centered``. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    for tensor in range(sizes.shape[0]):
        view(addresses[2, tensor], 1, step_marker)[0] += 1

    c = (
        compute(grad_factor, marker),
        weight_decay != 0.0,
        compute(weight_decay, marker),
        compute(alpha, marker),
        compute(1.0 - alpha, marker),
        compute(eps, marker),
    )
    epsilon = compute(eps, marker)
    neg_lr, mu = compute(-lr, marker), compute(momentum, marker)
    with_momentum = momentum > 0.0
    grad_avg_row = 5 if with_momentum else 4
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        param = view(addresses[0, tensor], stop, marker)[start:stop]
        grad = view(addresses[1, tensor], stop, marker)[start:stop]
        square_avg = view(addresses[3, tensor], stop, marker)[start:stop]
        if with_momentum:
            buffer = view(addresses[4, tensor], stop, marker)[start:stop]
        if centered:
            grad_avg = view(addresses[grad_avg_row, tensor], stop, marker)[start:stop]
        if with_momentum and centered:
            for i in range(stop - start):
                g, v = decayed_grad(param, grad, square_avg, i, c)
                b = load(buffer, i) * mu + g / centered_avg(grad_avg, i, g, v, c)
                buffer[i] = encode(b, buffer)
                param[i] = encode(load(param, i) + neg_lr * b, param)
        elif with_momentum:
            for i in range(stop - start):
                g, v = decayed_grad(param, grad, square_avg, i, c)
                b = load(buffer, i) * mu + g / (np.sqrt(v) + epsilon)
                buffer[i] = encode(b, buffer)
                param[i] = encode(load(param, i) + neg_lr * b, param)
        elif centered:
            for i in range(stop - start):
                g, v = decayed_grad(param, grad, square_avg, i, c)
                avg = centered_avg(grad_avg, i, g, v, c)
                param[i] = encode(load(param, i) + neg_lr * g / avg, param)
        else:
            for i in range(stop - start):
                g, v = decayed_grad(param, grad, square_avg, i, c)
                param[i] = encode(load(param, i) + neg_lr * g / (np.sqrt(v) + epsilon), param)
