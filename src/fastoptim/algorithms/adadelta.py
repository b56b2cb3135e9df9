"""Adadelta: step sizes from running averages of squared gradients and squared updates."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as torch_adadelta
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adadelta import adadelta_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


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

    kernel = adadelta_kernel
    declared_state = (
        Scalar("step"),
        Buffer("square_avg", non_negative=True),
        Buffer("acc_delta", non_negative=True),
    )

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

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        check_lr(options["lr"])
        rho = options["rho"]
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_non_negative(options["eps"], "epsilon value")
        check_non_negative(options["weight_decay"], "weight_decay value")

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
