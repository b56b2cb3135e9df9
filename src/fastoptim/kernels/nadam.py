"""Fused NAdam kernel: one pass over param, grad and moments for every tensor of a group."""

from collections import namedtuple

import numpy as np
from numba import njit, prange

from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
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

ROW = memory_rows("step", "mu_product", "exp_avg", "exp_avg_sq")

# The per-call constants of the element loop, in the compute type.
Constants = namedtuple(
    "Constants", ["factor", "shrink", "l2", "decay", "weight1", "keep1", "keep2", "weight2"]
)


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
def moments(param, grad, exp_avg, exp_avg_sq, i, c):  # type: ignore[no-untyped-def]
    """Element ``i``'s (decayed param, gradient, new exp_avg, new exp_avg_sq) with Constants
    ``c``: g = factor * grad (+ decay * p with L2), p = shrink * p (decoupled decay),
    m = lerp(m, g, 1 - b1), v = b2 * v + (1 - b2) * g^2."""
    g = load(grad, i) * c.factor
    p = load(param, i) * c.shrink
    g = g + c.decay * p if c.l2 else g
    m = lerp(load(exp_avg, i), g, c.weight1, c.keep1)
    v = load(exp_avg_sq, i) * c.keep2 + c.weight2 * g * g
    return p, g, m, v


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
        sizes_t = step_sizes(lr, mu, mu_next, np.float64(product[0]))
        grad_steps[tensor], momentum_steps[tensor] = sizes_t
        inverse_correction2s[tensor] = (1.0 - beta2**t) ** -0.5

    c = Constants(
        compute(grad_factor, marker),
        compute(1.0 - lr * weight_decay if decoupled_weight_decay else 1.0, marker),
        weight_decay != 0.0 and not decoupled_weight_decay,
        compute(weight_decay, marker),
        compute(1.0 - beta1, marker),
        compute(beta1, marker),
        compute(beta2, marker),
        compute(1.0 - beta2, marker),
    )
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
