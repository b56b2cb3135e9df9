"""Adamax: Adam with the infinity norm in place of the second moment (Kingma & Ba, 2015)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adamax import adamax as torch_adamax
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adamax import adamax_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_betas, check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


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

    kernel = adamax_kernel
    declared_state = (Scalar("step"), Buffer("exp_avg"), Buffer("exp_inf", non_negative=True))

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

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        check_lr(options["lr"])
        check_non_negative(options["eps"], "epsilon value")
        check_betas(options["betas"])
        check_non_negative(options["weight_decay"], "weight_decay value")

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
