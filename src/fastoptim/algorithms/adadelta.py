"""Adadelta: step sizes from running averages of squared gradients and squared updates."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as torch_adadelta
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adadelta import adadelta_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
    real_view,
)


class Adadelta(BaseOptimizer):
    """Adadelta (Zeiler, 2012), a drop-in for ``torch.optim.Adadelta``.

    With gradient ``g``::

        g = g + wd * p
        v = rho * v + (1 - rho) * g^2
        d = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * d^2
        p = p - lr * d

    ``fused`` is fastoptim's addition to torch's signature (keyword-only, last).
    """

    sparse_grad_error = "Adadelta does not support sparse gradients"

    kernel_rows = adadelta_kernel.rows
    state_buffers = ("square_avg", "acc_delta")
    non_negative_state = frozenset(("square_avg", "acc_delta"))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_non_negative(eps, "epsilon value")
        check_non_negative(weight_decay, "weight_decay value")
        defaults = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
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
        state["acc_delta"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        adadelta_update(param, grad, self._state_of(param, group), group)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        return ["step", "square_avg", "acc_delta"]

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        adadelta_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            step_marker=call.step_marker,
            lr=float(group["lr"]),
            rho=float(group["rho"]),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            grad_factor=call.grad_factor,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_adadelta(
            params,
            grads,
            [s["square_avg"] for s in states],
            [s["acc_delta"] for s in states],
            [s["step"] for s in states],
            capturable=group["capturable"],
            foreach=group["foreach"],
            differentiable=group["differentiable"],
            has_complex=any(torch.is_complex(p) for p in params),
            lr=group["lr"],
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


def adadelta_update(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
) -> None:
    """One Adadelta step of one parameter, in torch.optim's for-loop operation order."""
    rho, eps = group["rho"], group["eps"]
    state["step"] += 1
    if group["maximize"]:
        grad = -grad
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])

    is_complex = torch.is_complex(param)
    grad = real_view(grad)
    square_avg, acc_delta = real_view(state["square_avg"]), real_view(state["acc_delta"])
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_()
    if group["differentiable"]:
        delta = delta.clone()  # keep sqrt's saved output intact for autograd
    delta.div_(std).mul_(grad)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    if is_complex:
        delta = torch.view_as_complex(delta)
    param.add_(delta, alpha=-as_scalar(group["lr"]))
