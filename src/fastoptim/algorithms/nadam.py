"""NAdam: Adam with Nesterov momentum (Dozat, 2016), with both weight decays."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.nadam import nadam as torch_nadam
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.nadam import nadam_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_betas, check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


class NAdam(BaseOptimizer):
    """NAdam, a drop-in for ``torch.optim.NAdam``.

    With gradient ``g`` at step ``t`` and mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))::

        g = g + wd * p                 (L2 decay; decoupled: p = p * (1 - lr * wd) instead)
        mu_product = mu_product * mu_t                 (the product of mu_1 .. mu_t)
        m = lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g^2
        d = sqrt(v / (1 - b2^t)) + eps
        p = p - lr * (1 - mu_t) / (1 - mu_product) * g / d
              - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / d

    ``fused`` is fastoptim's addition to torch's signature (keyword-only, after torch's).
    """

    sparse_grad_error = "NAdam does not support sparse gradients"

    kernel = nadam_kernel
    declared_state = (
        Scalar("step"),
        Scalar("mu_product", 1.0),
        Buffer("exp_avg"),
        Buffer("exp_avg_sq", non_negative=True),
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
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
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
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
        check_betas(options["betas"])
        check_non_negative(options["weight_decay"], "weight_decay value")
        check_non_negative(options["momentum_decay"], "momentum_decay value")

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_nadam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["mu_product"] for s in states],
            [s["step"] for s in states],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            has_complex=any(torch.is_complex(p) for p in params),
            maximize=group["maximize"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum_decay=group["momentum_decay"],
            eps=group["eps"],
        )
