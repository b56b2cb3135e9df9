"""Fused Adadelta kernel: one pass over param, grad and both averages for every tensor."""

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
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)


@kernel
def adadelta_kernel(  # type: ignore[no-untyped-def]
    memory, sizes, marker, state_marker, step_marker, lr, rho, eps, weight_decay, grad_factor
):
    """Adadelta over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: param, grad, step, square_avg, acc_delta. ``grad_factor``: -1 for maximize, times
    1/grad_scale.
    """
    addresses = memory[0]
    for tensor in range(sizes.shape[0]):
        view(addresses[2, tensor], 1, step_marker)[0] += 1

    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    keep, weight = compute(rho, marker), compute(1.0 - rho, marker)
    epsilon = compute(eps, marker)
    neg_lr = compute(-lr, marker)
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
            acc_delta = open_buffer(memory, 4, tensor, first, last, square)
            new_acc_delta = open_sink(acc_delta, scratch[2])
            for i in range(last - first):
                p, g = decayed_grad(param, grad, i, factor, l2, decay)
                v = load(square_avg, i) * keep + weight * g * g
                a = load(acc_delta, i)
                delta = np.sqrt((a + epsilon) / (v + epsilon)) * g  # one root for two
                put(new_square_avg, i, v, square_avg)
                put(new_acc_delta, i, a * keep + weight * delta * delta, acc_delta)
                put(new_param, i, p + neg_lr * delta, param)
            finish(square_avg, new_square_avg)
            finish(acc_delta, new_acc_delta)
            finish(param, new_param)
