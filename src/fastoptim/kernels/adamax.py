"""Fused Adamax kernel: one pass over param, grad, exp_avg and exp_inf for every tensor."""

import numpy as np
from numba import prange

from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
    decayed_grad,
    finish,
    kernel,
    lerp,
    load,
    maximum,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)


@kernel
def adamax_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    grad_factor,
):
    """Adamax over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: param, grad, step, exp_avg, exp_inf. ``grad_factor``: -1 for maximize, times
    1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    neg_clrs = np.empty(count)
    for tensor in range(count):
        step = view(addresses[2, tensor], 1, step_marker)
        step[0] += 1
        neg_clrs[tensor] = -(lr / (1.0 - beta1 ** np.float64(step[0])))

    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    weight1, keep1 = compute(1.0 - beta1, marker), compute(beta1, marker)
    keep2 = compute(beta2, marker)
    epsilon = compute(eps, marker)
    square = unsigned(state_marker)
    block = block_size(marker, state_marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        scratch = scratch_for(marker, state_marker)
        neg_clr = compute(neg_clrs[tensor], marker)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, 0, tensor, first, last, marker)
            new_param = open_sink(param, scratch[0])
            grad = view(addresses[1, tensor], last, marker)[first:last]
            exp_avg = open_buffer(memory, 3, tensor, first, last, state_marker)
            new_exp_avg = open_sink(exp_avg, scratch[1])
            exp_inf = open_buffer(memory, 4, tensor, first, last, square)
            new_exp_inf = open_sink(exp_inf, scratch[2])
            for i in range(last - first):
                p, g = decayed_grad(param, grad, i, factor, l2, decay)
                m = lerp(load(exp_avg, i), g, weight1, keep1)
                u = maximum(load(exp_inf, i) * keep2, np.abs(g) + epsilon)
                put(new_exp_avg, i, m, exp_avg)
                put(new_exp_inf, i, u, exp_inf)
                put(new_param, i, p + neg_clr * m / u, param)
            finish(exp_avg, new_exp_avg)
            finish(exp_inf, new_exp_inf)
            finish(param, new_param)
