"""Fused RMSprop kernel: one pass over param, grad and averages for every tensor of a group."""

from collections import namedtuple

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
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "square_avg", "momentum_buffer", "grad_avg")

# The per-call constants of the element loop, in the compute type (keep = alpha).
Constants = namedtuple("Constants", ["factor", "l2", "decay", "keep", "weight", "epsilon"])


@njit(inline="always")
def grad_and_square_avg(param, grad, square_avg, i, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s gradient g (with L2 decay) and its new square average
    alpha * v + (1 - alpha) * g^2, with Constants ``c``."""
    _, g = decayed_grad(param, grad, i, c.factor, c.l2, c.decay)
    return g, load(square_avg, i) * c.keep + c.weight * g * g


@njit(inline="always")
def centered_stats(grad_avg, i, g, v, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s new gradient average gbar = lerp(gbar, g, 1 - alpha) and
    sqrt(v - gbar^2) + eps."""
    gbar = lerp(load(grad_avg, i), g, c.weight, c.keep)
    return gbar, np.sqrt(v - gbar * gbar) + c.epsilon


@kernel(ROW)
def rmsprop_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    grad_factor,
    fresh,
    lr,
    alpha,
    eps,
    weight_decay,
    momentum,
    centered,
):
    """RMSprop over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW`` (momentum_buffer only when ``momentum > 0``, grad_avg only when
    ``centered``). ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    for tensor in range(sizes.shape[0]):
        view(addresses[ROW.step, tensor], 1, step_marker)[0] += 1

    c = Constants(
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
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(state_marker, ROW)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, ROW.param, tensor, first, last, marker)
            new_param = open_sink(param, scratch[ROW.param])
            grad = view(addresses[ROW.grad, tensor], last, marker)[first:last]
            square_avg = open_buffer(memory, ROW.square_avg, tensor, first, last, square)
            new_square_avg = open_sink(square_avg, scratch[ROW.square_avg])
            # Four loops: a buffer used conditionally inside one loop stops vectorization.
            if with_momentum and centered:
                buffer = open_buffer(memory, ROW.momentum_buffer, tensor, first, last, state_marker)
                new_buffer = open_sink(buffer, scratch[ROW.momentum_buffer])
                grad_avg = open_buffer(memory, ROW.grad_avg, tensor, first, last, state_marker)
                new_grad_avg = open_sink(grad_avg, scratch[ROW.grad_avg])
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
                buffer = open_buffer(memory, ROW.momentum_buffer, tensor, first, last, state_marker)
                new_buffer = open_sink(buffer, scratch[ROW.momentum_buffer])
                for i in range(last - first):
                    g, v = grad_and_square_avg(param, grad, square_avg, i, c)
                    b = load(buffer, i) * mu + g / (np.sqrt(v) + epsilon)
                    put(new_square_avg, i, v, square_avg)
                    put(new_buffer, i, b, buffer)
                    put(new_param, i, load(param, i) + neg_lr * b, param)
                finish(buffer, new_buffer)
            elif centered:
                grad_avg = open_buffer(memory, ROW.grad_avg, tensor, first, last, state_marker)
                new_grad_avg = open_sink(grad_avg, scratch[ROW.grad_avg])
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
