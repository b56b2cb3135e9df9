"""RMSprop: gradients divided by a running root-mean-square (Hinton, 2012)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.rmsprop import rmsprop as torch_rmsprop

from fastoptim.kernels.rmsprop import rmsprop_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


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

    kernel = rmsprop_kernel
    declared_state = (
        Scalar("step"),
        Buffer("square_avg", non_negative=True),
        Buffer("momentum_buffer", when="momentum"),
        Buffer("grad_avg", when="centered"),
    )

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

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        check_lr(options["lr"])
        check_non_negative(options["eps"], "epsilon value")
        check_non_negative(options["momentum"], "momentum value")
        check_non_negative(options["weight_decay"], "weight_decay value")
        check_non_negative(options["alpha"], "alpha value")

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
