"""Fused Adam/AdamW kernel: one pass over param, grad and moments for every tensor of a group."""

import numpy as np
from numba import njit, prange

from fastoptim.kernels.memory import chunks_of, compute, encode, kernel, lerp, load, maximum, view


@njit(inline="always")
def moments(param, grad, exp_avg, exp_avg_sq, i, c):  # type: ignore[no-untyped-def]
    """Update element ``i``'s moments; return (decayed param, exp_avg, exp_avg_sq).

    ``c``: (grad factor, decoupled shrink, L2 on, L2 decay, 1 - b1, b1, b2, 1 - b2).
    """
    factor, shrink, l2, decay, weight1, keep1, keep2, weight2 = c
    g = load(grad, i) * factor
    p = load(param, i) * shrink
    g = g + decay * p if l2 else g
    m = lerp(load(exp_avg, i), g, weight1, keep1)
    v = load(exp_avg_sq, i) * keep2 + weight2 * g * g
    exp_avg[i] = encode(m, exp_avg)
    exp_avg_sq[i] = encode(v, exp_avg_sq)
    return p, m, v


@kernel
def adam_kernel(  # type: ignore[no-untyped-def]
    addresses,
    sizes,
    marker,
    step_marker,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled_weight_decay,
    amsgrad,
    grad_factor,
):
    """Adam over the tensors whose addresses are the columns of ``addresses``.

    Rows: param, grad, step, exp_avg, exp_avg_sq, and max_exp_avg_sq with amsgrad.
    ``grad_factor`` multiplies every gradient: -1 for maximize, times 1/grad_scale.
    """
    count = sizes.shape[0]
    step_sizes = np.empty(count)
    bias_correction2_sqrts = np.empty(count)
    for tensor in range(count):
        step = view(addresses[2, tensor], 1, step_marker)
        step[0] += 1
        t = np.float64(step[0])
        step_sizes[tensor] = lr / (1.0 - beta1**t)
        bias_correction2_sqrts[tensor] = (1.0 - beta2**t) ** 0.5

    c = (
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
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        param = view(addresses[0, tensor], stop, marker)[start:stop]
        grad = view(addresses[1, tensor], stop, marker)[start:stop]
        exp_avg = view(addresses[3, tensor], stop, marker)[start:stop]
        exp_avg_sq = view(addresses[4, tensor], stop, marker)[start:stop]
        neg_step_size = compute(-step_sizes[tensor], marker)
        bias_correction2_sqrt = compute(bias_correction2_sqrts[tensor], marker)
        if amsgrad:
            max_exp_avg_sq = view(addresses[5, tensor], stop, marker)[start:stop]
            for i in range(stop - start):
                p, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                v = maximum(load(max_exp_avg_sq, i), v)
                max_exp_avg_sq[i] = encode(v, max_exp_avg_sq)
                denom = np.sqrt(v) / bias_correction2_sqrt + epsilon
                param[i] = encode(p + neg_step_size * m / denom, param)
        else:
            for i in range(stop - start):
                p, m, v = moments(param, grad, exp_avg, exp_avg_sq, i, c)
                denom = np.sqrt(v) / bias_correction2_sqrt + epsilon
                param[i] = encode(p + neg_step_size * m / denom, param)
