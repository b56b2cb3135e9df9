"""Fused NAdam kernel: one pass over param, grad and moments for every tensor of a group."""

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

# exp_avg and exp_avg_sq in rows 3 and 4 share one random hash per element for bfloat16
# stochastic rounding (fastoptim.kernels.memory), as Adam's do; mu_product, a scalar, last.
ROW = memory_rows("step", "exp_avg", "exp_avg_sq", "mu_product")


@njit(inline="always")
def momentum(t, beta1, momentum_decay):  # type: ignore[no-untyped-def]
    """The momentum coefficient of step ``t``: mu_t = b1 * (1 - 0.5 * 0.96^(t * psi))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


# Compiled on its own, without the kernels' fast-math contraction: torch computes these in
# Python floats, rounding 1 - mu_product * mu_next's product before the subtraction.
@njit(cache=True)
def step_sizes(lr, mu, mu_next, mu_product):  # type: ignore[no-untyped-def]
    """The (gradient, momentum) step sizes: -lr * (1 - mu_t) / (1 - prod_{i<=t} mu_i) and
    -lr * mu_{t+1} / (1 - mu_{t+1} * prod_{i<=t} mu_i)."""
    return -lr * (1.0 - mu) / (1.0 - mu_product), -lr * mu_next / (1.0 - mu_product * mu_next)


@njit(inline="always")
def stepped(p, g, m, v, grad_step, momentum_step, unbias, epsilon):  # type: ignore[no-untyped-def]
    """The parameter after the step: p + (grad_step * g + momentum_step * m) /
    (sqrt(v) / sqrt(1 - b2^t) + eps), dividing by sqrt(1 - b2^t) as a multiplication by
    ``unbias`` = 1 / sqrt(1 - b2^t)."""
    return p + (grad_step * g + momentum_step * m) / (np.sqrt(v) * unbias + epsilon)


@kernel(ROW)
def nadam_kernel(  # type: ignore[no-untyped-def]
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
    momentum_decay,
    decoupled_weight_decay,
):
    """NAdam over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW``; ``step`` and ``mu_product`` are 0-d tensors of type ``step_marker``.
    mu_product is multiplied by mu_t rounded to its own type first, as torch's tensor op is.
    ``grad_factor`` multiplies every gradient: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    grad_steps = np.empty(count)
    momentum_steps = np.empty(count)
    inverse_correction2s = np.empty(count)
    for tensor in range(count):
        step = view(addresses[ROW.step, tensor], 1, step_marker)
        product = view(addresses[ROW.mu_product, tensor], 1, step_marker)
        step[0] += 1
        t = np.float64(step[0])
        mu = momentum(t, beta1, momentum_decay)
        product[0] = product[0] * compute(mu, step_marker)
        mu_next = momentum(t + 1.0, beta1, momentum_decay)
        grad_steps[tensor], momentum_steps[tensor] = step_sizes(
            lr, mu, mu_next, np.float64(product[0])
        )
        inverse_correction2s[tensor] = (1.0 - beta2**t) ** -0.5

    c = constants(grad_factor, lr, beta1, beta2, weight_decay, decoupled_weight_decay, marker)
    epsilon = compute(eps, marker)
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(state_marker, ROW)
        grad_step = compute(grad_steps[tensor], marker)
        momentum_step = compute(momentum_steps[tensor], marker)
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
            for i in range(last - first):
                p, g, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                put(new_exp_avg, i, m, exp_avg)
                put(new_exp_avg_sq, i, v, exp_avg_sq)
                updated = stepped(
                    p, g, m, v, grad_step, momentum_step, inverse_correction2, epsilon
                )
                put(new_param, i, updated, param)
            finish(exp_avg, new_exp_avg)
            finish(exp_avg_sq, new_exp_avg_sq)
            finish(param, new_param)
