"""Fused Adam/AdamW kernel: one pass over param, grad and moments for every tensor of a group."""

import numpy as np
from numba import njit, prange

from fastoptim.kernels.elementwise import constants, moments
from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
    finish,
    kernel,
    load,
    maximum,
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@njit(inline="always")
def stepped(p, m, v, neg_step_size, inverse_correction2, epsilon):  # type: ignore[no-untyped-def]
    """The parameter after the step: p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),
    dividing by sqrt(1 - b2^t) as a multiplication by its inverse (one division less)."""
    return p + neg_step_size * m / (np.sqrt(v) * inverse_correction2 + epsilon)


@kernel(ROW)
def adam_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    grad_factor,
    fresh,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled_weight_decay,
    amsgrad,
):
    """Adam over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW`` (max_exp_avg_sq only with amsgrad).
    ``grad_factor`` multiplies every gradient: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    step_sizes = np.empty(count)
    inverse_correction2s = np.empty(count)
    for tensor in range(count):
        step = view(addresses[ROW.step, tensor], 1, step_marker)
        step[0] += 1
        t = np.float64(step[0])
        step_sizes[tensor] = lr / (1.0 - beta1**t)
        inverse_correction2s[tensor] = (1.0 - beta2**t) ** -0.5

    c = constants(grad_factor, lr, beta1, beta2, weight_decay, decoupled_weight_decay, marker)
    epsilon = compute(eps, marker)
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(state_marker, ROW)
        neg_step_size = compute(-step_sizes[tensor], marker)
        inverse_correction2 = compute(inverse_correction2s[tensor], marker)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, ROW.param, tensor, first, last, marker)
            new_param = open_sink(param, scratch[ROW.param])
            grad = view(addresses[ROW.grad, tensor], last, marker)[first:last]
            exp_avg = open_buffer(memory, ROW.exp_avg, tensor, first, last, state_marker)
            new_exp_avg = open_sink(exp_avg, scratch[ROW.exp_avg])
            exp_avg_sq = open_buffer(memory, ROW.exp_avg_sq, tensor, first, last, square)
            new_exp_avg_sq = open_sink(exp_avg_sq, scratch[ROW.exp_avg_sq])
            if amsgrad:
                max_exp_avg_sq = open_buffer(
                    memory, ROW.max_exp_avg_sq, tensor, first, last, square
                )
                new_max = open_sink(max_exp_avg_sq, scratch[ROW.max_exp_avg_sq])
                for i in range(last - first):
                    p, _, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                    put(new_exp_avg, i, m, exp_avg)
                    put(new_exp_avg_sq, i, v, exp_avg_sq)
                    v = maximum(load(max_exp_avg_sq, i), v)
                    put(new_max, i, v, max_exp_avg_sq)
                    updated = stepped(p, m, v, neg_step_size, inverse_correction2, epsilon)
                    put(new_param, i, updated, param)
                finish(max_exp_avg_sq, new_max)
            else:
                for i in range(last - first):
                    p, _, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                    put(new_exp_avg, i, m, exp_avg)
                    put(new_exp_avg_sq, i, v, exp_avg_sq)
                    updated = stepped(p, m, v, neg_step_size, inverse_correction2, epsilon)
                    put(new_param, i, updated, param)
            finish(exp_avg, new_exp_avg)
            finish(exp_avg_sq, new_exp_avg_sq)
            finish(param, new_param)
