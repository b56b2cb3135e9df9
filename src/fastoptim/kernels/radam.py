"""Fused RAdam kernel: one pass over param, grad and moments for every tensor of a group."""

import numpy as np
from numba import njit, prange

from fastoptim.kernels.elementwise import constants, moments
from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
    finish,
    kernel,
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "exp_avg", "exp_avg_sq")


@njit(inline="always")
def rectified_step(t, lr, beta1, beta2):  # type: ignore[no-untyped-def]
    """Step ``t``'s (rectified, signed step size). With rho_inf = 2 / (1 - b2) - 1 and
    rho_t = rho_inf - 2 t b2^t / (1 - b2^t): if rho_t > 5, the update is
    -lr * r_t * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), with the rectification
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t));
    otherwise the un-adapted -lr / (1 - b1^t) * m."""
    correction1 = 1.0 - beta1**t
    correction2 = 1.0 - beta2**t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2**t / correction2
    if rho_t > 5.0:
        ratio = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf
        rect = (ratio / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
        return True, -(lr * rect * correction2**0.5 / correction1)
    return False, -(lr / correction1)


@njit(inline="always")
def stepped(p, m, v, rectified, neg_step_size, epsilon):  # type: ignore[no-untyped-def]
    """The parameter after the step: p + step * m / (sqrt(v) + eps) if ``rectified``, else
    p + step * m (``neg_step_size`` from :func:`rectified_step`)."""
    return p + neg_step_size * (m / (np.sqrt(v) + epsilon) if rectified else m)


@kernel(ROW)
def radam_kernel(  # type: ignore[no-untyped-def]
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
):
    """RAdam over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW``. Whether a tensor's step is rectified depends on its own step count.
    ``grad_factor`` multiplies every gradient: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    rectifieds = np.empty(count, np.bool_)
    step_sizes = np.empty(count)
    for tensor in range(count):
        step = view(addresses[ROW.step, tensor], 1, step_marker)
        step[0] += 1
        t = np.float64(step[0])
        rectifieds[tensor], step_sizes[tensor] = rectified_step(t, lr, beta1, beta2)

    c = constants(grad_factor, lr, beta1, beta2, weight_decay, decoupled_weight_decay, marker)
    epsilon = compute(eps, marker)
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(state_marker, ROW)
        rectified = rectifieds[tensor]
        neg_step_size = compute(step_sizes[tensor], marker)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, ROW.param, tensor, first, last, marker)
            new_param = open_sink(param, scratch[ROW.param])
            grad = view(addresses[ROW.grad, tensor], last, marker)[first:last]
            exp_avg = open_buffer(memory, ROW.exp_avg, tensor, first, last, state_marker)
            new_exp_avg = open_sink(exp_avg, scratch[ROW.exp_avg])
            exp_avg_sq = open_buffer(memory, ROW.exp_avg_sq, tensor, first, last, square)
            new_exp_avg_sq = open_sink(exp_avg_sq, scratch[ROW.exp_avg_sq])
            for i in range(last - first):
                p, _, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                put(new_exp_avg, i, m, exp_avg)
                put(new_exp_avg_sq, i, v, exp_avg_sq)
                put(new_param, i, stepped(p, m, v, rectified, neg_step_size, epsilon), param)
            finish(exp_avg, new_exp_avg)
            finish(exp_avg_sq, new_exp_avg_sq)
            finish(param, new_param)
