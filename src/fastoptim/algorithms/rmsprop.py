"""RMSprop: gradients divided by a running root-mean-square (Hinton, 2012)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.rmsprop import rmsprop as torch_rmsprop

from fastoptim.kernels.rmsprop import rmsprop_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
    real_view,
)


class RMSprop(BaseOptimizer):
    """RMSprop, a drop-in for ``torch.optim.RMSprop``.

    With gradient ``g``::

        g = g + wd * p
        v = alpha * v + (1 - alpha) * g^2
        a = sqrt(v) + eps                       (centered: gbar = lerp(gbar, g, 1 - alpha),
                                                           a = sqrt(v - gbar^2) + eps)
        b = momentum * b + g / a;  p = p - lr * b   (momentum > 0)
        p = p - lr * g / a                          (otherwise)

    ``fused`` is fastoptim's addition to torch's signature (keyword-only, last).
    """

    sparse_grad_error = "RMSprop does not support sparse gradients"

    kernel_rows = rmsprop_kernel.rows
    state_buffers = ("square_avg", "momentum_buffer", "grad_avg")
    non_negative_state = frozenset(("square_avg",))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        check_non_negative(eps, "epsilon value")
        check_non_negative(momentum, "momentum value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(alpha, "alpha value")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        rmsprop_update(param, grad, self._state_of(param, group), group)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        keys = ["step", "square_avg"]
        if group["momentum"] > 0:
            keys.append("momentum_buffer")
        if group["centered"]:
            keys.append("grad_avg")
        return keys

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        rmsprop_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            step_marker=call.step_marker,
            lr=float(group["lr"]),
            alpha=float(group["alpha"]),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            momentum=float(group["momentum"]),
            centered=group["centered"],
            grad_factor=call.grad_factor,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_rmsprop(
            params,
            grads,
            [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if group["centered"] else [],
            [s["momentum_buffer"] for s in states] if group["momentum"] > 0 else [],
            [s["step"] for s in states],
            foreach=group["foreach"],
            maximize=group["maximize"],
            differentiable=group["differentiable"],
            capturable=group["capturable"],
            has_complex=any(torch.is_complex(p) for p in params),
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
        )


def rmsprop_update(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
) -> None:
    """One RMSprop step of one parameter, in torch.optim's for-loop operation order."""
    lr, alpha, eps = as_scalar(group["lr"]), group["alpha"], group["eps"]
    if group["maximize"]:
        grad = -grad
    state["step"] += 1
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])

    param, grad = real_view(param), real_view(grad)
    square_avg = real_view(state["square_avg"])
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if group["centered"]:
        grad_avg = real_view(state["grad_avg"])
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add(eps) if group["differentiable"] else avg.add_(eps)

    if group["momentum"] > 0:
        buffer = real_view(state["momentum_buffer"])
        buffer.mul_(group["momentum"]).addcdiv_(grad, avg)
        param.add_(buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)
