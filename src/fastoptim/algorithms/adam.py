"""Adam: adaptive moment estimation (Kingma & Ba, 2015), with AMSGrad and both weight decays."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adam import adam_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
    real_view,
)


class Adam(BaseOptimizer):
    """Adam, a drop-in for ``torch.optim.Adam``.

    With gradient ``g`` at step ``t``::

        g = g + wd * p                 (L2 decay; decoupled: p = p * (1 - lr * wd) instead)
        m = lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g^2    (amsgrad: v_max = max(v_max, v), used below for v)
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    sparse_grad_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    kernel_rows = adam_kernel.rows
    state_buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    non_negative_state = frozenset(("exp_avg_sq", "max_exp_avg_sq"))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        check_non_negative(eps, "epsilon value")
        for index in (0, 1):
            if not 0.0 <= betas[index] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")
        check_non_negative(weight_decay, "weight_decay value")
        if not (
            all(isinstance(beta, float) for beta in betas)
            or all(isinstance(beta, Tensor) for beta in betas)
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for index, beta in enumerate(betas):
            if isinstance(beta, Tensor):
                if foreach and not capturable:
                    raise ValueError(
                        f"betas[{index}] as a Tensor is not supported for capturable=False "
                        "and foreach=True"
                    )
                if beta.numel() != 1:
                    raise ValueError(f"Tensor betas[{index}] must be 1-element")
        defaults = {
            "lr": lr,
            "betas": tuple(as_scalar(beta) for beta in betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        state["step"] = self._new_step(param, group)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        adam_update(param, grad, self._state_of(param, group), group)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        return ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        beta1, beta2 = (float(beta) for beta in group["betas"])
        adam_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            step_marker=call.step_marker,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            grad_factor=call.grad_factor,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_adam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
            [s["step"] for s in states],
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            fused=group["fused"],
            has_complex=any(torch.is_complex(p) for p in params),
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def adam_update(param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One Adam step of one parameter, in torch.optim's for-loop operation order.

    With ``differentiable`` the bias corrections stay tensors, so gradients flow through
    Tensor ``lr`` and ``betas``.
    """
    lr, weight_decay, eps = as_scalar(group["lr"]), group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    differentiable = group["differentiable"]
    if group["maximize"]:
        grad = -grad
    step = state["step"]
    step += 1

    if weight_decay != 0:
        if group["decoupled_weight_decay"]:
            param.mul_(1 - lr * weight_decay)
        elif isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            grad = torch.addcmul(grad, param, weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)

    grad, param = real_view(grad), real_view(param)
    exp_avg, exp_avg_sq = real_view(state["exp_avg"]), real_view(state["exp_avg_sq"])

    if isinstance(beta1, Tensor):
        exp_avg.lerp_(grad, 1 - beta1.to(device=param.device, dtype=param.dtype))
    else:
        exp_avg.lerp_(grad, 1 - beta1)
    if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad:
        exp_avg_sq.lerp_(torch.square(grad), weight=1 - beta2)
    else:
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    second_moment = exp_avg_sq
    if group["amsgrad"]:
        max_exp_avg_sq = real_view(state["max_exp_avg_sq"])
        if differentiable:
            max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq))
        else:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq

    if differentiable:
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step).sqrt()
        neg_step_size = (lr / bias_correction1).neg()
        denom = (second_moment.sqrt() / (bias_correction2_sqrt * neg_step_size)).add_(
            eps / neg_step_size
        )
        param.addcdiv_(exp_avg.clone(), denom)
    else:
        t = step.item()
        step_size = lr / (1 - beta1**t)
        denom = (second_moment.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
