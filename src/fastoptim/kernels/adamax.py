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
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "exp_avg", "exp_inf")


@kernel(ROW)
def adamax_kernel(  # type: ignore[no-untyped-def]
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
):
    """Adamax over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW``. ``grad_factor``: -1 for maximize, times
    1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    neg_clrs = np.empty(count)
    for tensor in range(count):
        step = view(addresses[ROW.step, tensor], 1, step_marker)
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
        scratch = scratch_for(state_marker, ROW)
        neg_clr = compute(neg_clrs[tensor], marker)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, ROW.param, tensor, first, last, marker)
            new_param = open_sink(param, scratch[ROW.param])
            grad = view(addresses[ROW.grad, tensor], last, marker)[first:last]
            exp_avg = open_buffer(memory, ROW.exp_avg, tensor, first, last, state_marker)
            new_exp_avg = open_sink(exp_avg, scratch[ROW.exp_avg])
            exp_inf = open_buffer(memory, ROW.exp_inf, tensor, first, last, square)
            new_exp_inf = open_sink(exp_inf, scratch[ROW.exp_inf])
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
