"""Fused SGD kernel: one pass over param, grad and momentum buffer for every tensor of a group."""

from numba import prange

from fastoptim.kernels.memory import chunks_of, compute, encode, kernel, load, view


@kernel
def sgd_kernel(  # type: ignore[no-untyped-def]
    addresses, sizes, marker, lr, momentum, dampening, weight_decay, nesterov, grad_factor, fresh
):
    """SGD over the tensors whose addresses are the columns of ``addresses``.

    Rows: param, grad, and momentum_buffer when ``momentum != 0``; ``fresh[t]`` marks a buffer
    that starts as the gradient. ``grad_factor``: -1 for maximize, times 1/grad_scale.
    """
    factor = compute(grad_factor, marker)
    l2 = weight_decay != 0.0
    decay = compute(weight_decay, marker)
    neg_lr = compute(-lr, marker)
    mu = compute(momentum, marker)
    undamped = compute(1.0 - dampening, marker)
    rows = chunks_of(sizes)
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        param = view(addresses[0, tensor], stop, marker)[start:stop]
        grad = view(addresses[1, tensor], stop, marker)[start:stop]
        if momentum == 0.0:
            for i in range(stop - start):
                g = load(grad, i) * factor
                p = load(param, i)
                g = g + decay * p if l2 else g
                param[i] = encode(p + neg_lr * g, param)
        else:
            buffer = view(addresses[2, tensor], stop, marker)[start:stop]
            first = fresh[tensor]
            for i in range(stop - start):
                g = load(grad, i) * factor
                p = load(param, i)
                g = g + decay * p if l2 else g
                b = g if first else load(buffer, i) * mu + undamped * g
                buffer[i] = encode(b, buffer)
                g = g + mu * b if nesterov else b
                param[i] = encode(p + neg_lr * g, param)
