"""Adam: adaptive moment estimation (Kingma & Ba, 2015), with AMSGrad and both weight decays."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam
from torch.optim.optimizer import ParamsT

from fastoptim.kernels.adam import adam_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import as_scalar, check_betas, check_lr, check_non_negative
from fastoptim.state import Buffer, Scalar


class Adam(BaseOptimizer):
    """Adam, a drop-in for ``torch.optim.Adam``.

    With gradient ``g`` at step ``t``::

        g = g + wd * p                 (L2 decay; decoupled: p = p * (1 - lr * wd) instead)
        m = lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g^2    (amsgrad: v_max = max(v_max, v), used below for v)
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    sparse_grad_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    kernel = adam_kernel
    declared_state = (
        Scalar("step"),
        Buffer("exp_avg"),
        Buffer("exp_avg_sq", non_negative=True),
        Buffer("max_exp_avg_sq", non_negative=True, when="amsgrad"),
    )

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

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        lr, betas, foreach, capturable = (
            options[key] for key in ("lr", "betas", "foreach", "capturable")
        )
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )
        check_lr(lr)
        check_non_negative(options["eps"], "epsilon value")
        check_betas(betas)
        check_non_negative(options["weight_decay"], "weight_decay value")
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
