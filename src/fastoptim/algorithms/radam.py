"""RAdam: Adam with the variance of its adaptive learning rate rectified (Liu et al., 2020)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.radam import radam as torch_radam

from fastoptim.kernels.radam import radam_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_betas, check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


class RAdam(BaseOptimizer):
    """RAdam, a drop-in for ``torch.optim.RAdam``.

    With gradient ``g`` at step ``t``, rho_inf = 2 / (1 - b2) - 1 and
    rho_t = rho_inf - 2 t b2^t / (1 - b2^t)::

        g = g + wd * p                 (L2 decay; decoupled: p = p * (1 - lr * wd) instead)
        m = lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g^2
        if rho_t > 5:                  (from t = 6 with b2 = 0.999)
            r = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
            p = p - lr * r * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
        else:
            p = p - lr / (1 - b1^t) * m

    ``fused`` is fastoptim's addition to torch's signature (keyword-only, after torch's).
    """

    sparse_grad_error = "RAdam does not support sparse gradients"

    kernel = radam_kernel
    declared_state = (
        Scalar("step"),
        Buffer("exp_avg"),
        Buffer("exp_avg_sq", non_negative=True),
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
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
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "decoupled_weight_decay": decoupled_weight_decay,
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

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        states = [self._state_of(p, group) for p in params]
        torch_radam(
            params,
            grads,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            foreach=group["foreach"],
            differentiable=group["differentiable"],
            capturable=group["capturable"],
            has_complex=any(torch.is_complex(p) for p in params),
            maximize=group["maximize"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
        )
