"""Fused SGD kernel: one pass over param, grad and momentum buffer for every tensor of a group."""

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
    view,
)

ROW = memory_rows("momentum_buffer")


@kernel(ROW)
def sgd_kernel(  # type: ignore[no-untyped-def]
    memory,
    sizes,
    marker,
    state_marker,
    step_marker,
    grad_factor,
    fresh,
    lr,
    momentum,
    dampening,
    weight_decay,
    nesterov,
):
    """SGD over the tensors whose addresses are the columns of ``memory[0]``.

    Rows: ``ROW`` (momentum_buffer only when ``momentum != 0``); ``fresh[t]`` marks a buffer
    that starts as the gradient. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    addresses = memory[0]
    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    neg_lr = compute(-lr, marker)
    mu = compute(momentum, marker)
    undamped = compute(1.0 - dampening, marker)
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
            if momentum == 0.0:
                for i in range(last - first):
                    p, g = decayed_grad(param, grad, i, factor, l2, decay)
                    put(new_param, i, p + neg_lr * g, param)
            else:
                buffer = open_buffer(memory, ROW.momentum_buffer, tensor, first, last, state_marker)
                new_buffer = open_sink(buffer, scratch[ROW.momentum_buffer])
                keep = compute(0.0, marker) if fresh[tensor] else mu
                weight = compute(1.0, marker) if fresh[tensor] else undamped
                for i in range(last - first):
                    p, g = decayed_grad(param, grad, i, factor, l2, decay)
                    b = load(buffer, i) * keep + weight * g
                    put(new_buffer, i, b, buffer)
                    g = g + mu * b if nesterov else b
                    put(new_param, i, p + neg_lr * g, param)
                finish(buffer, new_buffer)
            finish(param, new_param)
