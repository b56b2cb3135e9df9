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
    memory_rows,
    open_buffer,
    open_sink,
    put,
    scratch_for,
    unsigned,
    view,
)

ROW = memory_rows("step", "square_avg", "acc_delta")


@kernel(ROW)
def adadelta_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    grad_factor,
    fresh,
    lr,
    rho,
    eps,
    weight_decay,
):
    """Adadelta over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW``. ``grad_factor``: -1 for maximize, times
    1/grad_scale.
    """
    addresses = memory[0]
    for tensor in range(sizes.shape[0]):
        view(addresses[ROW.step, tensor], 1, step_marker)[0] += 1

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
        scratch = scratch_for(state_marker, ROW)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            param = open_buffer(memory, ROW.param, tensor, first, last, marker)
            new_param = open_sink(param, scratch[ROW.param])
            grad = view(addresses[ROW.grad, tensor], last, marker)[first:last]
            square_avg = open_buffer(memory, ROW.square_avg, tensor, first, last, square)
            new_square_avg = open_sink(square_avg, scratch[ROW.square_avg])
            acc_delta = open_buffer(memory, ROW.acc_delta, tensor, first, last, square)
            new_acc_delta = open_sink(acc_delta, scratch[ROW.acc_delta])
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
