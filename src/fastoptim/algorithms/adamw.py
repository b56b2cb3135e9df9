"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from fastoptim.algorithms.adam import Adam


class AdamW(Adam):
    """AdamW, a drop-in for ``torch.optim.AdamW``: Adam whose weight decay shrinks the parameter.

    With gradient ``g`` at step ``t``::

        p = p * (1 - lr * wd)
        m = lerp(m, g, 1 - b1)
        v = b2 * v + (1 - b2) * g^2    (amsgrad: v_max = max(v_max, v), used below for v)
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            state_dtype=state_dtype,
            stochastic_rounding=stochastic_rounding,
            nonfinite=nonfinite,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
