"""Adagrad: per-coordinate learning rates from the running sum of squared gradients."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as torch_adagrad
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adagrad import adagrad_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


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

    kernel = adagrad_kernel
    declared_state = (Scalar("step"), Buffer("sum", non_negative=True))

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

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        check_lr(options["lr"])
        check_non_negative(options["lr_decay"], "lr_decay value")
        check_non_negative(options["weight_decay"], "weight_decay value")
        check_non_negative(options["initial_accumulator_value"], "initial_accumulator_value value")
        check_non_negative(options["eps"], "epsilon value")

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        start = self.defaults["initial_accumulator_value"]
        if torch.is_complex(param):
            start = complex(start, start)
        state["step"] = self._new_scalar(param, group)
        state["sum"] = torch.full_like(param, start, memory_format=torch.preserve_format)

    def share_memory(self) -> None:
        """Move every ``sum`` buffer to shared memory (for Hogwild-style training)."""
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param]["sum"].share_memory_()

    def _sparse_grad_error(self, group: dict[str, Any]) -> str | None:
        """Sparse gradients are taken, but not with weight decay (checked before any update,
        where torch raises half way through a step)."""
        if group["weight_decay"] != 0:
            return "weight_decay option is not compatible with sparse gradients"
        return None

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
