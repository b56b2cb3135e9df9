"""SGD: stochastic gradient descent with optional (Nesterov) momentum."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.sgd import sgd as torch_sgd

from fastoptim.kernels.sgd import sgd_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
)


class SGD(BaseOptimizer):
    """SGD, a drop-in for ``torch.optim.SGD``. Sparse gradients are accepted.

    With gradient ``g`` at step ``t``::

        g = g + wd * p
        b = g                                   (t = 1)
        b = momentum * b + (1 - dampening) * g  (t > 1)
        g = g + momentum * b  (nesterov)   or   g = b
        p = p - lr * g

    The momentum buffer ``b`` exists only when ``momentum != 0``; SGD keeps no ``step``.
    """

    kernel_rows = sgd_kernel.rows
    state_buffers = ("momentum_buffer",)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        check_non_negative(momentum, "momentum value")
        check_non_negative(weight_decay, "weight_decay value")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        sgd_update(param, grad, self.state, group)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """The kernel's momentum buffer, set to the first gradient by the kernel (fresh)."""
        if group["momentum"] != 0:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        sgd_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            lr=float(group["lr"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            nesterov=group["nesterov"],
            grad_factor=call.grad_factor,
            fresh=call.fresh,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        with_momentum = group["momentum"] != 0
        buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        torch_sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=any(g.is_sparse for g in grads),
            foreach=group["foreach"],
            fused=group["fused"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if with_momentum:
            for param, buffer in zip(params, buffers, strict=True):
                self.state[param]["momentum_buffer"] = buffer


def sgd_update(
    param: Tensor, grad: Tensor, states: dict[Tensor, dict[str, Any]], group: dict[str, Any]
) -> None:
    """One SGD step of one parameter, in torch.optim's for-loop operation order.

    ``states`` is the optimizer's state table; it is touched only when momentum is on, so
    plain SGD keeps an empty state as torch.optim does.
    """
    lr, weight_decay, momentum = as_scalar(group["lr"]), group["weight_decay"], group["momentum"]
    if group["maximize"]:
        grad = -grad
    if weight_decay != 0:
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            grad = torch.addcmul(grad, param, weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)

    if momentum != 0:
        state = states[param]
        buffer = state.get("momentum_buffer")
        if buffer is None:
            buffer = state["momentum_buffer"] = grad.detach().clone()
        else:
            buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        grad = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer

    if isinstance(lr, Tensor) and lr.requires_grad:
        param.addcmul_(grad, lr, value=-1)
    else:
        param.add_(grad, alpha=-lr)
