"""Adagrad: per-coordinate learning rates from the running sum of squared gradients."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as torch_adagrad
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adagrad import adagrad_kernel
from fastoptim.optimizer import (
    BaseOptimizer,
    KernelCall,
    as_scalar,
    check_non_negative,
    check_tensor_lr,
    real_view,
)


class Adagrad(BaseOptimizer):
    """Adagrad, a drop-in for ``torch.optim.Adagrad``. Sparse gradients are accepted.

    With gradient ``g`` at step ``t``::

        g = g + wd * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g^2
        p = p - clr * g / (sqrt(s) + eps)

    As in torch.optim, the state (``sum`` starting at ``initial_accumulator_value``) is created
    in the constructor, and the constructor's ``initial_accumulator_value`` is the one used.
    """

    kernel_rows = adagrad_kernel.rows
    state_buffers = ("sum",)
    non_negative_state = frozenset(("sum",))

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        check_tensor_lr(lr)
        check_non_negative(lr, "learning rate")
        check_non_negative(lr_decay, "lr_decay value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(initial_accumulator_value, "initial_accumulator_value value")
        check_non_negative(eps, "epsilon value")
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                self._state_of(param, group)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        start = self.defaults["initial_accumulator_value"]
        if torch.is_complex(param):
            start = complex(start, start)
        state["step"] = self._new_step(param, group)
        state["sum"] = torch.full_like(param, start, memory_format=torch.preserve_format)

    def share_memory(self) -> None:
        """Move every ``sum`` buffer to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param]["sum"].share_memory_()

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        adagrad_update(param, grad, self._state_of(param, group), group)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        return ["step", "sum"]

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        adagrad_kernel(
            memory=call.memory,
            sizes=call.sizes,
            marker=call.marker,
            state_marker=call.state_marker,
            step_marker=call.step_marker,
            lr=float(group["lr"]),
            lr_decay=float(group["lr_decay"]),
            weight_decay=float(group["weight_decay"]),
            eps=float(group["eps"]),
            grad_factor=call.grad_factor,
        )

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_adagrad(
            params,
            grads,
            [s["sum"] for s in states],
            [s["step"] for s in states],
            fused=group["fused"],
            has_sparse_grad=any(g.is_sparse for g in grads),
            foreach=group["foreach"],
            differentiable=group["differentiable"],
            has_complex=any(torch.is_complex(p) for p in params),
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            lr_decay=group["lr_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def adagrad_update(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]
) -> None:
    """One Adagrad step of one parameter, in torch.optim's for-loop operation order.

    A sparse gradient updates only the coordinates it holds; it cannot be combined with
    weight decay.
    """
    step = state["step"]
    step += 1
    if group["maximize"]:
        grad = -grad
    if group["weight_decay"] != 0:
        if grad.is_sparse:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        grad = grad.add(param, alpha=group["weight_decay"])
    clr = as_scalar(group["lr"]) / (1 + (step.item() - 1) * group["lr_decay"])
    total = state["sum"]

    if grad.is_sparse:
        grad = grad.coalesce()  # the update is non-linear, so indices must be unique
        indices, values = grad.indices(), grad.values()

        def like_grad(new_values: Tensor) -> Tensor:
            return torch.sparse_coo_tensor(indices, new_values, grad.size(), check_invariants=False)

        total.add_(like_grad(values.pow(2)))
        std_values = total.sparse_mask(grad).values().sqrt().add_(group["eps"])
        param.add_(like_grad(values / std_values), alpha=-clr)
        return

    grad, total, param = real_view(grad), real_view(total), real_view(param)
    total.addcmul_(grad, grad, value=1)
    if group["differentiable"]:
        std = total.sqrt() + group["eps"]
    else:
        std = total.sqrt().add_(group["eps"])
    param.addcdiv_(grad, std, value=-clr)
