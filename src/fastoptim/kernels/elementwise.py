"""The element loop shared by the Adam-family kernels: the gradient with
weight decay, and the two moment updates, from per-call constants."""

from collections import namedtuple

from numba import njit

from fastoptim.kernels.memory import compute, lerp, load

# The per-call constants of the element loop, in the compute type.
Constants = namedtuple(
    "Constants", ["factor", "shrink", "l2", "decay", "weight1", "keep1", "keep2", "weight2"]
)


@njit(inline="always")
def constants(  # type: ignore[no-untyped-def]
    grad_factor, lr, beta1, beta2, weight_decay, decoupled_weight_decay, marker
):
    """The Constants of a call in the compute type of ``marker``: the gradient's factor, the
    decoupled decay's shrink 1 - lr * wd (else 1), whether L2 decay applies and its weight,
    1 - b1 and b1, b2 and 1 - b2."""
    return Constants(
        compute(grad_factor, marker),
        compute(1.0 - lr * weight_decay if decoupled_weight_decay else 1.0, marker),
        weight_decay != 0.0 and not decoupled_weight_decay,
        compute(weight_decay, marker),
        compute(1.0 - beta1, marker),
        compute(beta1, marker),
        compute(beta2, marker),
        compute(1.0 - beta2, marker),
    )


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
