"""Adamax: Adam with the infinity norm in place of the second moment (Kingma & Ba, 2015)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adamax import adamax as torch_adamax
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adamax import adamax_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
    real_view,
)


class Adamax(BaseOptimizer):
    """Adamax, a drop-in for ``torch.optim.Adamax``.

    With gradient ``g`` at step ``t``::

        g = g + wd * p
        m = lerp(m, g, 1 - b1)
        u = max(b2 * u, |g| + eps)
        p = p - lr / (1 - b1^t) * m / u

    ``fused`` is fastoptim's addition to torch's signature (keyword-only, last).
    """

    sparse_grad_error = "Adamax does not support sparse gradients"

    kernel_rows = adamax_kernel.rows
    state_buffers = ("exp_avg", "exp_inf")
    non_negative_state = frozenset(("exp_inf",))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        check_non_negative(eps, "epsilon value")
        for index in (0, 1):
            if not 0.0 <= betas[index] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")
        check_non_negative(weight_decay, "weight_decay value")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_inf"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        adamax_update(param, grad, self._state_of(param, group), group)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        return ["step", "exp_avg", "exp_inf"]

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        beta1, beta2 = group["betas"]
        adamax_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            step_marker=call.step_marker,
            lr=float(group["lr"]),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            grad_factor=call.grad_factor,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_adamax(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_inf"] for s in states],
            [s["step"] for s in states],
            foreach=group["foreach"],
            maximize=group["maximize"],
            differentiable=group["differentiable"],
            capturable=group["capturable"],
            has_complex=any(torch.is_complex(p) for p in params),
            eps=group["eps"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
        )


def adamax_update(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
) -> None:
    """One Adamax step of one parameter, in torch.optim's for-loop operation order."""
    beta1, beta2 = group["betas"]
    if group["maximize"]:
        grad = -grad
    step = state["step"]
    step += 1
    if group["weight_decay"] != 0:
        grad = grad.add(param, alpha=group["weight_decay"])

    param, grad = real_view(param), real_view(grad)
    exp_avg, exp_inf = real_view(state["exp_avg"]), real_view(state["exp_inf"])
    exp_avg.lerp_(grad, 1 - beta1)
    norm = grad.abs().add_(group["eps"])
    if group["differentiable"]:
        exp_inf.copy_(torch.maximum(exp_inf.mul(beta2), norm))
    else:
        torch.maximum(exp_inf.mul_(beta2), norm, out=exp_inf)
    step_size = as_scalar(group["lr"]) / (1 - beta1 ** step.item())
    param.addcdiv_(exp_avg, exp_inf, value=-step_size)
