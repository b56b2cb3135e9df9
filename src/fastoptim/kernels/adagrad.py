"""Fused Adagrad kernel: one pass over param, grad and sum for every tensor of a group."""

import numpy as np
from numba import prange

from fastoptim.kernels.memory import (
    block_size,
    chunks_of,
    compute,
    decayed_grad,
    finish,
    kernel,
    load,
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "sum")


@kernel(ROW)
def adagrad_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    grad_factor,
    fresh,
    lr,
    lr_decay,
    weight_decay,
    eps,
):
    """Adagrad over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW``. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    count = sizes.shape[0]
    neg_clrs = np.empty(count)
    for tensor in range(count):
        step = view(addresses[ROW.step, tensor], 1, step_marker)
        step[0] += 1
        neg_clrs[tensor] = -(lr / (1.0 + (np.float64(step[0]) - 1.0) * lr_decay))

    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
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
            total = open_buffer(memory, ROW.sum, tensor, first, last, square)
            new_total = open_sink(total, scratch[ROW.sum])
            for i in range(last - first):
                p, g = decayed_grad(param, grad, i, factor, l2, decay)
                s = load(total, i) + g * g
                put(new_total, i, s, total)
                put(new_param, i, p + neg_clr * g / (np.sqrt(s) + epsilon), param)
            finish(total, new_total)
            finish(param, new_param)
