"""Fused RMSprop kernel: one pass over param, grad and averages for every tensor of a group."""

import numpy as np
from numba import njit, prange

from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
    decayed_grad,
    finish,
    kernel,
    lerp,
    load,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)


@njit(inline="always")
def grad_and_square_avg(param, grad, square_avg, i, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s gradient (with L2 decay) and its new square average.

    ``c``: (grad factor, L2 on, L2 decay, alpha, 1 - alpha, eps).
    """
    factor, l2, decay, keep, weight, _ = c
    _, g = decayed_grad(param, grad, i, factor, l2, decay)
    return g, load(square_avg, i) * keep + weight * g * g


@njit(inline="always")
def centered_stats(grad_avg, i, g, v, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s new gradient average and sqrt(v - gbar^2) + eps."""
    _, _, _, keep, weight, epsilon = c
    gbar = lerp(load(grad_avg, i), g, weight, keep)
    return gbar, np.sqrt(v - gbar * gbar) + epsilon


@kernel
def rmsprop_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
    grad_factor,
):
    """RMSprop over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: param, grad, step, square_avg, then momentum_buffer when ``momentum > 0`` and
    grad_avg when ``centered``. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
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
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(marker, state_marker)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, 0, tensor, first, last, marker)
            new_param = open_sink(param, scratch[0])
            grad = view(addresses[1, tensor], last, marker)[first:last]
            square_avg = open_buffer(memory, 3, tensor, first, last, square)
            new_square_avg = open_sink(square_avg, scratch[1])
            # Four loops: a buffer used conditionally inside one loop stops vectorization.
            if with_momentum and centered:
                buffer = open_buffer(memory, 4, tensor, first, last, state_marker)
                new_buffer = open_sink(buffer, scratch[2])
                grad_avg = open_buffer(memory, grad_avg_row, tensor, first, last, state_marker)
                new_grad_avg = open_sink(grad_avg, scratch[3])
                for i in range(last - first):
                    g, v = grad_and_square_avg(param, grad, square_avg, i, c)
                    gbar, avg = centered_stats(grad_avg, i, g, v, c)
                    b = load(buffer, i) * mu + g / avg
                    put(new_square_avg, i, v, square_avg)
                    put(new_grad_avg, i, gbar, grad_avg)
                    put(new_buffer, i, b, buffer)
                    put(new_param, i, load(param, i) + neg_lr * b, param)
                finish(buffer, new_buffer)
                finish(grad_avg, new_grad_avg)
            elif with_momentum:
                buffer = open_buffer(memory, 4, tensor, first, last, state_marker)
                new_buffer = open_sink(buffer, scratch[2])
                for i in range(last - first):
                    g, v = grad_and_square_avg(param, grad, square_avg, i, c)
                    b = load(buffer, i) * mu + g / (np.sqrt(v) + epsilon)
                    put(new_square_avg, i, v, square_avg)
                    put(new_buffer, i, b, buffer)
                    put(new_param, i, load(param, i) + neg_lr * b, param)
                finish(buffer, new_buffer)
            elif centered:
                grad_avg = open_buffer(memory, grad_avg_row, tensor, first, last, state_marker)
                new_grad_avg = open_sink(grad_avg, scratch[2])
                for i in range(last - first):
                    g, v = grad_and_square_avg(param, grad, square_avg, i, c)
                    gbar, avg = centered_stats(grad_avg, i, g, v, c)
                    put(new_square_avg, i, v, square_avg)
                    put(new_grad_avg, i, gbar, grad_avg)
                    put(new_param, i, load(param, i) + neg_lr * g / avg, param)
                finish(grad_avg, new_grad_avg)
            else:
                for i in range(last - first):
                    g, v = grad_and_square_avg(param, grad, square_avg, i, c)
                    put(new_square_avg, i, v, square_avg)
                    put(new_param, i, load(param, i) + neg_lr * g / (np.sqrt(v) + epsilon), param)
            finish(square_avg, new_square_avg)
            finish(param, new_param)
